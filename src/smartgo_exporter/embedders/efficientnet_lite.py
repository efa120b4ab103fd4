"""EfficientNet-Lite0 as an ONNX graph built from a state dict, for onnxruntime, without torch.

The weights are the TensorFlow Lite network in lukemelas/EfficientNet-PyTorch key names. What
makes Lite differ from EfficientNet, and what a graph that merely loads the weights gets wrong:

- TensorFlow "same" padding: the total padding is computed from the input size and, when odd,
  the extra row and column go at the bottom and right. Symmetric padding shifts every stride-2
  layer by half a pixel; it loads the same weights and still predicts noticeably worse.
- batch-norm epsilon 1e-3 (PyTorch's default is 1e-5), folded into the convolutions here;
- ReLU6 (`Clip(0, 6)`) instead of swish, and no squeeze-and-excitation;
- a 32-channel stem and a 1280-channel head that are not scaled with the width multiplier.

The input size is fixed (224), so every pad is computed here once, and the graph has no shape
arithmetic left for onnxruntime to do. Only the batch dimension is dynamic.

    model = build_model(read_state_dict(pth_bytes))
    features, logits, gem = session.run(None, {INPUT_NAME: batch})  # 1280, 1000, 1280 each
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from smartgo_exporter.errors import ExporterError

INPUT_NAME = "images"
FEATURES_NAME = "features"
LOGITS_NAME = "logits"
GEM_FEATURES_NAME = "gem_features"
GEM_POWER = 3.0
"""Generalised-mean pooling's exponent: between average (1) and max pooling (infinity)."""
IMAGE_SIZE = 224
FEATURE_DIM = 1280
CLASSES = 1000
BN_EPSILON = 1e-3
OPSET = 17

_STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))
"""(repeats, stride of the first block) for EfficientNet-Lite0's seven stages.

Kernel sizes, channel counts and expansion are read from the weights' shapes; strides and the
stage boundaries are the one thing the state dict does not record.
"""


class ArchitectureMismatch(ExporterError):
    """The state dict is not EfficientNet-Lite0 in lukemelas key names (a key or shape is off)."""


@dataclass(frozen=True)
class _Block:
    index: int
    stride: int
    expand: bool
    kernel: int
    in_channels: int
    out_channels: int


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same": the odd extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _GraphWriter:
    def __init__(self, state: Mapping[str, NDArray[Any]]) -> None:
        self.state = state
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._clip_bounds_added = False

    def weight(self, key: str, shape: tuple[int, ...] | None = None) -> NDArray[np.float32]:
        if key not in self.state:
            raise ArchitectureMismatch(f"state dict has no {key!r}")
        value = np.asarray(self.state[key], dtype=np.float32)
        if shape is not None and value.shape != shape:
            raise ArchitectureMismatch(f"{key!r} has shape {value.shape}, expected {shape}")
        return value

    def constant(self, name: str, value: NDArray[np.float32]) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def conv_bn(
        self,
        x: str,
        size: int,
        conv: str,
        bn: str,
        *,
        stride: int = 1,
        depthwise: bool = False,
        relu6: bool = True,
    ) -> tuple[str, int]:
        """A convolution with its batch norm folded in: W*g/sqrt(v+eps), b-m*g/sqrt(v+eps)."""
        weight = self.weight(f"{conv}.weight")
        out_channels, _, kernel, _ = weight.shape
        channels = (out_channels,)
        gamma = self.weight(f"{bn}.weight", channels)
        beta = self.weight(f"{bn}.bias", channels)
        mean = self.weight(f"{bn}.running_mean", channels)
        var = self.weight(f"{bn}.running_var", channels)
        scale = gamma / np.sqrt(var + np.float32(BN_EPSILON))
        folded_weight = (weight * scale[:, None, None, None]).astype(np.float32)
        folded_bias = (beta - mean * scale).astype(np.float32)
        before, after = tf_same_pads(size, kernel, stride)
        y = f"{conv}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [
                    x,
                    self.constant(f"{conv}.w", folded_weight),
                    self.constant(f"{conv}.b", folded_bias),
                ],
                [y],
                name=conv,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=out_channels if depthwise else 1,
            )
        )
        if relu6:
            y = self.relu6(y)
        return y, -(-size // stride)

    def relu6(self, x: str) -> str:
        if not self._clip_bounds_added:
            self.constant("relu6.min", np.array(0.0, dtype=np.float32))
            self.constant("relu6.max", np.array(6.0, dtype=np.float32))
            self._clip_bounds_added = True
        y = f"{x}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, "relu6.min", "relu6.max"], [y], name=y))
        return y

    def add(self, a: str, b: str, name: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [name], name=name))
        return name


def _blocks(state: Mapping[str, NDArray[Any]]) -> list[_Block]:
    blocks: list[_Block] = []
    in_channels = 32
    for repeats, first_stride in _STAGES:
        for repeat in range(repeats):
            index = len(blocks)
            prefix = f"_blocks.{index}"
            depthwise = f"{prefix}._depthwise_conv.weight"
            project = f"{prefix}._project_conv.weight"
            expand = f"{prefix}._expand_conv.weight"
            if depthwise not in state or project not in state:
                raise ArchitectureMismatch(f"state dict has no block {index}")
            first = state[expand] if expand in state else state[depthwise]
            first_in = first.shape[1] if expand in state else first.shape[0]
            if first_in != in_channels:
                raise ArchitectureMismatch(
                    f"block {index} takes {first_in} channels, the block before gives {in_channels}"
                )
            blocks.append(
                _Block(
                    index=index,
                    stride=first_stride if repeat == 0 else 1,
                    expand=expand in state,
                    kernel=int(state[depthwise].shape[-1]),
                    in_channels=in_channels,
                    out_channels=int(state[project].shape[0]),
                )
            )
            in_channels = blocks[-1].out_channels
    if f"_blocks.{len(blocks)}._project_conv.weight" in state:
        raise ArchitectureMismatch(f"state dict has more than {len(blocks)} blocks")
    return blocks


def build_model(state: Mapping[str, NDArray[Any]]) -> onnx.ModelProto:
    """The inference graph: images (N, 3, 224, 224) -> features (N, 1280), logits (N, 1000),
    gem_features (N, 1280).

    `features` are the globally average-pooled head activations, the classifier's input;
    `gem_features` are the same activations GeM-pooled (the cube root of the mean cube), which
    weighs the strongest responses more: a small part (a label, a buckle) that fires a channel
    in a few places moves it more than in an average. Neither is normalised. Raises
    ArchitectureMismatch when a weight is missing or misshapen.
    """
    graph = _GraphWriter(state)
    x, size = graph.conv_bn(INPUT_NAME, IMAGE_SIZE, "_conv_stem", "_bn0", stride=2)
    for block in _blocks(state):
        prefix = f"_blocks.{block.index}"
        block_input = x
        if block.expand:
            x, size = graph.conv_bn(x, size, f"{prefix}._expand_conv", f"{prefix}._bn0")
        x, size = graph.conv_bn(
            x,
            size,
            f"{prefix}._depthwise_conv",
            f"{prefix}._bn1",
            stride=block.stride,
            depthwise=True,
        )
        x, size = graph.conv_bn(x, size, f"{prefix}._project_conv", f"{prefix}._bn2", relu6=False)
        if block.stride == 1 and block.in_channels == block.out_channels:
            x = graph.add(x, block_input, f"{prefix}.residual")
    x, size = graph.conv_bn(x, size, "_conv_head", "_bn1")

    graph.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    power = graph.constant("gem.power", np.array(GEM_POWER, dtype=np.float32))
    root = graph.constant("gem.root", np.array(1 / GEM_POWER, dtype=np.float32))
    graph.nodes += [
        helper.make_node("Pow", [x, power], ["gem.cubed"], name="gem.cube"),
        helper.make_node("GlobalAveragePool", ["gem.cubed"], ["gem.mean"], name="gem.pool"),
        helper.make_node("Pow", ["gem.mean", root], ["gem.pooled"], name="gem.root"),
        helper.make_node("Flatten", ["gem.pooled"], [GEM_FEATURES_NAME], name="gem", axis=1),
    ]
    graph.nodes.append(
        helper.make_node("Flatten", ["pooled"], [FEATURES_NAME], name="flatten", axis=1)
    )
    fc_weight = graph.weight("_fc.weight", (CLASSES, FEATURE_DIM))
    fc_bias = graph.weight("_fc.bias", (CLASSES,))
    graph.nodes.append(
        helper.make_node(
            "Gemm",
            [FEATURES_NAME, graph.constant("_fc.w", fc_weight), graph.constant("_fc.b", fc_bias)],
            [LOGITS_NAME],
            name="_fc",
            transB=1,
        )
    )

    onnx_graph = helper.make_graph(
        graph.nodes,
        "efficientnet_lite0",
        inputs=[
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        outputs=[
            helper.make_tensor_value_info(FEATURES_NAME, TensorProto.FLOAT, ["batch", FEATURE_DIM]),
            helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info(
                GEM_FEATURES_NAME, TensorProto.FLOAT, ["batch", FEATURE_DIM]
            ),
        ],
        initializer=graph.initializers,
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="smartgo-exporter",
    )
    # onnx stamps its own newest IR version, which an older onnxruntime refuses to load; 8 is
    # what opset 17 needs and every onnxruntime the `local` extra allows reads it.
    model.ir_version = 8
    return model
