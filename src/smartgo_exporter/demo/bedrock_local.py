"""A local server speaking Bedrock runtime's InvokeModel wire format, for Titan without AWS.

`smartgo-exporter demo --aws-local` starts it so that the Titan embedder runs its production code
(boto3, SigV4, botocore's retries and error parsing) with only `endpoint_url` changed; the tests
use it to prove that embedder against every answer Bedrock can give.

    with serve_bedrock(access_key="AKIA...", secret_key="...") as bedrock:
        config = TitanEmbedderConfig(endpoint_url=bedrock.endpoint_url, region="us-east-1")
        ...  # with the same key and secret in boto3's default chain (AWS_ACCESS_KEY_ID, ...)
        assert bedrock.requests > 0

It checks what Bedrock checks before a model runs, so a client that passes here is right about
more than the happy path:
- a SigV4 `Authorization` header, recomputed with botocore's own `SigV4Auth` from the server's
  secret over the headers the client says it signed (403 InvalidSignatureException when it
  differs, UnrecognizedClientException for an unknown access key);
- the model id (ValidationException "The provided model identifier is invalid.", as Bedrock
  answers an id it does not know) and the body: JSON with `inputImage` and/or `inputText`,
  `embeddingConfig.outputEmbeddingLength` of 256, 384 or 1024, no other keys;
- the image: base64 of a picture Pillow can open, at most 2048x2048 and `max_image_bytes`.

Errors come back as Bedrock sends them, a status, an `x-amzn-ErrorType` header (with Coral's
`:http://internal.amazon.com/...` suffix, which botocore's rest-json parser strips) and a JSON
`message`, so `ClientError.response["Error"]["Code"]` is what it would be against AWS.

An embedding is deterministic but means nothing: a pseudo-random vector seeded from the sha256
of the decoded image bytes (and of the text, averaged in as Titan does), near unit length as
Titan's are. Identical photos get identical vectors; any changed byte gives an unrelated one,
so similar-looking photos are NOT near each other. The server proves the wiring, not a model.

Knobs (`reset()` restores them): `dimension_override` (answer vectors of this length whatever
was asked), `throttle_next` (answer that many upcoming requests 429 ThrottlingException),
`throttle_seconds` (answer every request 429 ThrottlingException for that many seconds of wall
time, counted from the first request that arrives once it is set: a quota exhausted for a
while, however many calls the client makes meanwhile), `max_image_bytes`, `delay_seconds` (hold
every request that long), `denied_models` (403 AccessDeniedException). Records: `requests`,
`throttled`, `throttled_since` (the `time.monotonic()` of the first request `throttle_seconds`
throttled), `per_model`, `in_flight`, `max_in_flight`, `bodies` (the parsed JSON of every
signed, unthrottled request for a model it serves) and `last_body`.

It also speaks the two calls of Bedrock's control plane that batch inference needs,
CreateModelInvocationJob (POST /model-invocation-job) and GetModelInvocationJob (GET
/model-invocation-job/{ARN}), as AWS does: the job's JSONL records are read from S3 and its
output written back there, through `s3` (an `S3Access`: the stand-in for the job's service
role; a real S3 such as SeaweedFS). A job moves one step each time it is asked about:
Submitted, Validating (the input is read: a job of fewer than MIN_BATCH_RECORDS records, or
none, fails here, as Bedrock's quota says), InProgress, then Completed, having written for each
input file `<output>/<job id>/<input file name>.out` (one line per record: recordId,
modelInput and modelOutput, or an `error` with errorCode and errorMessage where the record
failed, as InvokeModel would refuse it) and `<output>/<job id>/manifest.json.out` (the
counts). Knobs: `fail_records` (record ids answered errorCode 500), `fail_job` (a message: the
job ends Failed with it instead of running). Records: `jobs` (job id -> `LocalJob`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import numpy as np
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from PIL import Image

from smartgo_exporter.demo.server import ServerThread

MODELS = frozenset({"amazon.titan-embed-image-v1"})
DIMENSIONS = frozenset({256, 384, 1024})
MAX_SIDE = 2048
MAX_TEXT_TOKENS = 256
DEFAULT_MAX_IMAGE_BYTES = 25_000_000
"""Titan's documented limit on the input image."""
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_REQUEST_BYTES = 64 * 1024 * 1024

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_KEPT_BY_RESET = frozenset({"endpoint_url", "access_key", "secret_key"})
MIN_BATCH_RECORDS = 100
"""Bedrock's default quota "Minimum number of records per batch inference job"."""
ACCOUNT_ID = "000000000000"
_JOB_NAME = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")
_ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")
_JOB_ARN = re.compile(
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/)?(?P<id>[a-z0-9]{12})"
)


class _Refusal(Exception):
    """An error answer, raised from deep in a check and turned into a response once."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return web.json_response(
            {"message": self.message},
            status=self.status,
            headers={
                "x-amzn-ErrorType": self.code + _ERROR_TYPE_SUFFIX,
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )


def _validation(message: str) -> _Refusal:
    return _Refusal(400, "ValidationException", message)


@dataclasses.dataclass
class LocalBedrock:
    """The server's credentials, address, knobs and records; see the module docstring.

    Only a request signed with `access_key` and `secret_key` gets an embedding. `endpoint_url`
    is set once `serve_bedrock` listens.
    """

    access_key: str
    secret_key: str
    endpoint_url: str = ""
    dimension_override: int | None = None
    throttle_next: int = 0
    throttle_seconds: float = 0.0
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    delay_seconds: float = 0.0
    denied_models: set[str] = dataclasses.field(default_factory=set)
    requests: int = 0
    throttled: int = 0
    throttled_since: float | None = None
    per_model: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    s3: S3Access | None = None
    fail_records: set[str] = dataclasses.field(default_factory=set)
    fail_job: str | None = None
    jobs: dict[str, LocalJob] = dataclasses.field(default_factory=dict)

    @property
    def last_body(self) -> dict[str, Any]:
        assert self.bodies, "the server has received no valid request"
        return self.bodies[-1]

    def reset(self) -> None:
        """Knobs back to their defaults and records emptied; credentials and address kept."""
        fresh = LocalBedrock(self.access_key, self.secret_key)
        for field in dataclasses.fields(self):
            if field.name not in _KEPT_BY_RESET:
                setattr(self, field.name, getattr(fresh, field.name))

    async def invoke(self, request: web.Request) -> web.Response:
        """POST /model/{model_id}/invoke, as Bedrock runtime's InvokeModel answers it."""
        payload = await request.read()
        model = request.match_info["model_id"]
        self.requests += 1
        self.per_model[model] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            return web.json_response(
                self._answer(request, model, payload),
                headers={"x-amzn-RequestId": str(uuid.uuid4())},
            )
        except _Refusal as refusal:
            return refusal.response()
        finally:
            self.in_flight -= 1

    def _answer(self, request: web.Request, model: str, payload: bytes) -> dict[str, Any]:
        _check_signature(request, payload, Credentials(self.access_key, self.secret_key))
        if self.throttle_next > 0:
            self.throttle_next -= 1
            raise self._throttled()
        if self.throttle_seconds > 0:
            now = time.monotonic()
            if self.throttled_since is None:
                self.throttled_since = now
            if now - self.throttled_since < self.throttle_seconds:
                raise self._throttled()
        if model not in MODELS:
            raise _validation("The provided model identifier is invalid.")
        if model in self.denied_models:
            raise _Refusal(
                403,
                "AccessDeniedException",
                "You don't have access to the model with the specified model ID.",
            )
        if request.content_type != "application/json":
            raise _validation(f"unsupported content type {request.content_type!r}")
        try:
            body = json.loads(payload)
        except ValueError:
            raise _validation("Malformed input request: not valid JSON") from None
        if not isinstance(body, dict):
            raise _validation("Malformed input request: expected type: JSONObject")
        self.bodies.append(body)
        length, image, text = self._parse(body)
        tokens = len(text.split())
        vector = _embedding(image, text, self.dimension_override or length)
        return {"embedding": vector, "inputTextTokenCount": tokens}

    async def create_job(self, request: web.Request) -> web.Response:
        """POST /model-invocation-job, as CreateModelInvocationJob answers it."""
        payload = await request.read()
        try:
            _check_signature(request, payload, Credentials(self.access_key, self.secret_key))
            job = self._new_job(request, payload)
        except _Refusal as refusal:
            return refusal.response()
        return web.json_response({"jobArn": job.arn})

    async def get_job(self, request: web.Request) -> web.Response:
        """GET /model-invocation-job/{jobIdentifier}, as GetModelInvocationJob answers it; each
        call moves the job on by one status (see the module docstring)."""
        try:
            _check_signature(request, b"", Credentials(self.access_key, self.secret_key))
            match = _JOB_ARN.fullmatch(request.match_info["job"])
            job = self.jobs.get(match["id"]) if match else None
            if job is None:
                raise _Refusal(404, "ResourceNotFoundException", "The job does not exist.")
            self._advance(job)
        except _Refusal as refusal:
            return refusal.response()
        return web.json_response(job.description())

    def _new_job(self, request: web.Request, payload: bytes) -> LocalJob:
        try:
            body = json.loads(payload)
            name, role, model = body["jobName"], body["roleArn"], body["modelId"]
            input_uri = body["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
            output_uri = body["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        except (ValueError, KeyError, TypeError):
            raise _validation(
                "jobName, roleArn, modelId, inputDataConfig and outputDataConfig are required"
            ) from None
        token = body.get("clientRequestToken")
        for job in self.jobs.values():
            if token is not None and job.request.get("clientRequestToken") == token:
                return job  # an idempotent retry gets the job it already made
        if not _JOB_NAME.fullmatch(name):
            raise _validation(f"Invalid jobName {name!r}")
        if not _ROLE_ARN.fullmatch(role):
            raise _validation(f"Invalid roleArn {role!r}")
        if model not in MODELS:
            raise _validation("The provided model identifier is invalid.")
        if not (input_uri.startswith("s3://") and output_uri.startswith("s3://")):
            raise _validation("The input and output locations must be s3:// URIs")
        signed = _AUTHORIZATION.fullmatch(request.headers["Authorization"])
        region = signed["region"] if signed else ""  # checked already: the signing region
        job_id = uuid.uuid4().hex[:12]
        arn = f"arn:aws:bedrock:{region}:{ACCOUNT_ID}:model-invocation-job/{job_id}"
        job = LocalJob(arn, body, datetime.now(UTC))
        self.jobs[job_id] = job
        return job

    def _advance(self, job: LocalJob) -> None:
        if job.status == "Submitted":
            job.status = "Validating"
            self._validate(job)
        elif job.status == "Validating":
            job.status = "InProgress"
        elif job.status == "InProgress":
            self._run(job)
            job.status = "Completed"
            job.ended_at = datetime.now(UTC)

    def _validate(self, job: LocalJob) -> None:
        """Read the job's input from S3, failing it as Bedrock would when it cannot be run."""
        if self.fail_job is not None:
            job.fail(self.fail_job)
            return
        if self.s3 is None:
            job.fail("Amazon Bedrock could not access the input location (no S3 configured)")
            return
        client = self.s3.client()
        bucket, prefix = _split_s3(job.input_uri)
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        keys = sorted(item["Key"] for item in listed if item["Key"].endswith(".jsonl"))
        for key in keys:
            text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            job.inputs[key] = [json.loads(line) for line in text.splitlines() if line.strip()]
        total = sum(len(records) for records in job.inputs.values())
        if total < MIN_BATCH_RECORDS:
            job.fail(
                f"The minimum number of records for a batch inference job is {MIN_BATCH_RECORDS};"
                f" the input holds {total}."
            )

    def _run(self, job: LocalJob) -> None:
        """Embed every record and write the output files and manifest, as Bedrock lays them out."""
        assert self.s3 is not None
        client = self.s3.client()
        bucket, prefix = _split_s3(job.output_uri)
        folder = f"{prefix.rstrip('/')}/{job.job_id}" if prefix else job.job_id
        _, input_prefix = _split_s3(job.input_uri)
        for key, records in job.inputs.items():
            lines = [json.dumps(self._batch_record(record, job)) for record in records]
            name = (
                key[len(input_prefix) :].lstrip("/")
                if key != input_prefix
                else key.rsplit("/", 1)[-1]
            )
            out = "\n".join(lines) + "\n"
            client.put_object(Bucket=bucket, Key=f"{folder}/{name}.out", Body=out.encode())
        manifest = {
            "totalRecordCount": job.total,
            "processedRecordCount": job.total,
            "successRecordCount": job.total - job.errors,
            "errorRecordCount": job.errors,
            "inputTokenCount": 0,
            "outputTokenCount": 0,
        }
        client.put_object(
            Bucket=bucket, Key=f"{folder}/manifest.json.out", Body=json.dumps(manifest).encode()
        )

    def _batch_record(self, record: dict[str, Any], job: LocalJob) -> dict[str, Any]:
        record_id = str(record.get("recordId") or uuid.uuid4().hex[:11].upper())
        model_input = record.get("modelInput")
        out: dict[str, Any] = {"recordId": record_id, "modelInput": model_input}
        try:
            if record_id in self.fail_records:
                raise _Refusal(500, "InternalServerException", "Internal server error")
            if not isinstance(model_input, dict):
                raise _validation("Malformed input request: expected type: JSONObject")
            length, image, text = self._parse(model_input)
        except _Refusal as refusal:
            job.errors += 1
            out["error"] = {"errorCode": refusal.status, "errorMessage": refusal.message}
            return out
        vector = _embedding(image, text, self.dimension_override or length)
        out["modelOutput"] = {"embedding": vector, "inputTextTokenCount": len(text.split())}
        return out

    def _throttled(self) -> _Refusal:
        self.throttled += 1
        return _Refusal(429, "ThrottlingException", "Too many requests, please wait.")

    def _parse(self, body: dict[str, Any]) -> tuple[int, bytes, str]:
        """(output length, image bytes, text) of a valid request; ValidationException if not."""
        extraneous = sorted(set(body) - {"inputImage", "inputText", "embeddingConfig"})
        if extraneous:
            raise _validation(
                f"Malformed input request: extraneous key {extraneous} is not permitted"
            )
        if "inputImage" not in body and "inputText" not in body:
            raise _validation("Malformed input request: inputImage or inputText is required")
        config = body.get("embeddingConfig", {})
        length = config.get("outputEmbeddingLength", 1024) if isinstance(config, dict) else None
        if length not in DIMENSIONS:
            raise _validation(
                f"Malformed input request: #/embeddingConfig/outputEmbeddingLength: {length} is "
                f"not a valid enum value, please reformat your input and try again."
            )
        text = body.get("inputText", "")
        if not isinstance(text, str) or len(text.split()) > MAX_TEXT_TOKENS:
            raise _validation(f"inputText must be a string of at most {MAX_TEXT_TOKENS} tokens")
        image = self._image(body["inputImage"]) if "inputImage" in body else b""
        return int(length), image, text

    def _image(self, encoded: object) -> bytes:
        if not isinstance(encoded, str):
            raise _validation("Malformed input request: #/inputImage: expected type: String")
        try:
            data = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise _validation("Invalid image: inputImage is not valid base64") from None
        if len(data) > self.max_image_bytes:
            raise _validation(f"Invalid image: over the limit of {self.max_image_bytes} bytes")
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                image.verify()
        except Exception:  # whatever Pillow cannot open, Titan cannot either
            raise _validation("Invalid image: the image could not be decoded") from None
        if width > MAX_SIDE or height > MAX_SIDE:
            raise _validation(
                f"Invalid image: {width}x{height} exceeds the maximum of {MAX_SIDE}x{MAX_SIDE}"
            )
        return data


@dataclasses.dataclass(frozen=True)
class S3Access:
    """Where the local Bedrock reads batch input and writes batch output, and as whom."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


@dataclasses.dataclass
class LocalJob:
    """One batch inference job: its request, where it stands, and the records it read."""

    arn: str
    request: dict[str, Any]
    submitted_at: datetime
    status: str = "Submitted"
    message: str = ""
    ended_at: datetime | None = None
    inputs: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    """Input file key -> its records, once Validating has read them."""
    errors: int = 0

    @property
    def job_id(self) -> str:
        return self.arn.rsplit("/", 1)[-1]

    @property
    def input_uri(self) -> str:
        return str(self.request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"])

    @property
    def output_uri(self) -> str:
        return str(self.request["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])

    @property
    def total(self) -> int:
        return sum(len(records) for records in self.inputs.values())

    def fail(self, message: str) -> None:
        self.status, self.message, self.ended_at = "Failed", message, datetime.now(UTC)

    def description(self) -> dict[str, Any]:
        """GetModelInvocationJob's answer."""
        answer: dict[str, Any] = {
            "jobArn": self.arn,
            "jobName": self.request["jobName"],
            "modelId": self.request["modelId"],
            "roleArn": self.request["roleArn"],
            "status": self.status,
            "submitTime": self.submitted_at.isoformat(),
            "lastModifiedTime": datetime.now(UTC).isoformat(),
            "inputDataConfig": self.request["inputDataConfig"],
            "outputDataConfig": self.request["outputDataConfig"],
            "timeoutDurationInHours": self.request.get("timeoutDurationInHours", 24),
        }
        if self.message:
            answer["message"] = self.message
        if self.ended_at is not None:
            answer["endTime"] = self.ended_at.isoformat()
        if "clientRequestToken" in self.request:
            answer["clientRequestToken"] = self.request["clientRequestToken"]
        if self.status == "Completed":
            answer["totalRecordCount"] = self.total
            answer["processedRecordCount"] = self.total
            answer["successRecordCount"] = self.total - self.errors
            answer["errorRecordCount"] = self.errors
        return answer


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _check_signature(request: web.Request, payload: bytes, credentials: Credentials) -> None:
    """Recompute the client's SigV4 signature over what it says it signed; refuse if it differs."""
    header = request.headers.get("Authorization")
    if header is None:
        raise _Refusal(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTHORIZATION.fullmatch(header)
    if match is None:
        raise _Refusal(403, "IncompleteSignatureException", "Malformed Authorization header")
    if match["key"] != credentials.access_key:
        raise _Refusal(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    if match["service"] != "bedrock":
        raise _Refusal(
            403,
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        )
    signed = match["signed"].split(";")
    amz_date = request.headers.get("X-Amz-Date", "")
    missing = [name for name in signed if name not in request.headers]
    if missing or "host" not in signed or "x-amz-date" not in signed:
        raise _Refusal(
            403, "IncompleteSignatureException", f"Unsigned or missing headers: {missing}"
        )
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _Refusal(403, "IncompleteSignatureException", "Malformed X-Amz-Date") from None
    skew = abs(datetime.now(UTC) - signed_at)
    if not amz_date.startswith(match["date"]) or skew > MAX_CLOCK_SKEW:
        raise _Refusal(403, "InvalidSignatureException", f"Signature expired: {amz_date}")
    declared = request.headers.get("X-Amz-Content-SHA256")
    if declared is not None and declared != hashlib.sha256(payload).hexdigest():
        raise _Refusal(
            400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' does not match"
        )
    headers = {name: ",".join(request.headers.getall(name)) for name in signed}
    rebuilt = AWSRequest(
        method=request.method,
        url=f"http://{request.host}{request.raw_path}",
        headers=headers,
        data=payload,
    )
    rebuilt.context["timestamp"] = amz_date
    signer = SigV4Auth(credentials, match["service"], match["region"])
    canonical = signer.canonical_request(rebuilt)
    expected = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
    same_headers = signer.signed_headers(signer.headers_to_sign(rebuilt)) == match["signed"]
    if not same_headers or not hmac.compare_digest(expected, match["signature"]):
        raise _Refusal(403, "InvalidSignatureException", _SIGNATURE_MISMATCH)


def _embedding(image: bytes, text: str, length: int) -> list[float]:
    """Titan-like: the average of an image and a text vector, each seeded by its input."""
    parts = [_seeded_unit(b"image\0" + image, length)] if image else []
    if text:
        parts.append(_seeded_unit(b"text\0" + text.encode(), length))
    vector = np.mean(parts, axis=0)
    # Titan's vectors are close to, not exactly, unit length; so are these.
    scale = 0.98 + 0.04 * hashlib.sha256(image + text.encode()).digest()[0] / 255
    return [float(x) for x in vector / np.linalg.norm(vector) * scale]


def _seeded_unit(data: bytes, length: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8])
    vector = np.random.default_rng(seed).standard_normal(length)
    unit: np.ndarray[Any, np.dtype[np.float64]] = vector / np.linalg.norm(vector)
    return unit


@contextlib.contextmanager
def serve_bedrock(
    *, access_key: str, secret_key: str, host: str = "127.0.0.1", port: int = 0
) -> Iterator[LocalBedrock]:
    """Serve InvokeModel and the batch job calls on `host`:`port` (0: a free port) while the
    block runs.

    Yields the server, its `endpoint_url` set; it is stopped, and the port closed, on the way out.
    """
    server = LocalBedrock(access_key, secret_key)
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post("/model/{model_id:.+}/invoke", server.invoke)
    app.router.add_post("/model-invocation-job", server.create_job)
    app.router.add_get("/model-invocation-job/{job:.+}", server.get_job)
    thread = ServerThread(app, host, port, name="local-bedrock")
    bound = thread.start()
    server.endpoint_url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
    try:
        yield server
    finally:
        thread.stop()
