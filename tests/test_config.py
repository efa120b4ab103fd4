"""Settings: one TOML file, SGX_* overrides, errors that name the key, secrets resolved once."""

import re
from pathlib import Path

import pytest

from smartgo_exporter.config_loader import load_config
from smartgo_exporter.errors import ConfigError, SecretError

MINIMAL = """
[source]
type = "sql"
url = "sqlite:///sales.db"
table = "sales"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smartgo-exporter.toml"
    path.write_text(text)
    return path


def test_a_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL))
    assert settings.export.catch_up_days == 7
    assert settings.export.source_name == "smartgo"
    assert settings.photos.concurrency == 8
    assert settings.photos.attempts == 3
    assert settings.photos.timeout_seconds == 30
    assert settings.photos.max_bytes == 10_000_000
    assert settings.retention_days == 90
    assert settings.table.namespace == "pricing_intelligence"
    assert settings.table.name == "smartgo_sales"
    assert settings.source.currency_case == "normalise"


def test_aws_regions_default_to_aws_region_which_botocore_does_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    settings = load_config(write(tmp_path, MINIMAL + '\n[embedder]\ntype = "titan"\n'))
    assert settings.embedder.type == "titan"
    assert settings.embedder.region == "eu-north-1"
    assert settings.aws.region == "eu-north-1"
    monkeypatch.setenv("SGX_EMBEDDER__REGION", "us-east-1")  # a configured region wins
    settings = load_config(write(tmp_path, MINIMAL + '\n[embedder]\ntype = "titan"\n'))
    assert settings.embedder.region == "us-east-1"


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL))
    assert settings.progress.path == tmp_path / "progress.db"
    assert settings.table.catalog["uri"] == f"sqlite:///{tmp_path}/warehouse/catalog.db"
    assert settings.table.catalog["warehouse"] == f"file://{tmp_path}/warehouse"


def test_environment_variables_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGX_EXPORT__TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("SGX_PHOTOS__CONCURRENCY", "3")
    settings = load_config(write(tmp_path, MINIMAL + '\n[export]\ntimezone = "UTC"\n'))
    assert settings.export.timezone == "Europe/Paris"
    assert settings.photos.concurrency == 3


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[export]\ntimezone = "Mars/Olympus"', "export.timezone"),
        ("[photos]\nconcurrency = 0", "photos.concurrency"),
        ("[photos]\nconcurency = 4", "photos.concurency"),
        ('[source.columns]\nprice = "p"', "source.columns"),
        ('currency_case = "normalize"', "source.currency_case"),
    ],
)
def test_an_invalid_setting_is_reported_by_its_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, MINIMAL + "\n" + extra + "\n"))
    assert raised.value.key == key


def test_a_sql_source_needs_exactly_one_of_table_and_query(tmp_path: Path) -> None:
    text = '[source]\ntype = "sql"\nurl = "sqlite:///s.db"\n'
    with pytest.raises(ConfigError, match="exactly one of") as raised:
        load_config(write(tmp_path, text))
    assert raised.value.key == "source"


def test_a_query_without_window_parameters_is_refused(tmp_path: Path) -> None:
    text = '[source]\ntype = "sql"\nurl = "sqlite:///s.db"\nquery = "SELECT * FROM sales"\n'
    with pytest.raises(ConfigError, match=":start and :end"):
        load_config(write(tmp_path, text))


def test_a_file_that_is_not_toml_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[source\n")
    with pytest.raises(ConfigError, match="not valid TOML") as raised:
        load_config(path)
    assert raised.value.key == str(path)


def test_secret_references_are_resolved_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTGO_DB_PASSWORD", "s3cret-from-env")
    (tmp_path / "token").write_text("s3cret-from-file\n")
    settings = load_config(
        write(tmp_path, MINIMAL + 'password = "env://SMARTGO_DB_PASSWORD"\n'),
    )
    assert settings.source.password is not None
    assert settings.source.password.get_secret_value() == "s3cret-from-env"
    rest = load_config(
        source={
            "type": "rest",
            "url": "http://127.0.0.1/sales",
            "token": f"file://{tmp_path}/token",
        }
    )
    assert rest.source.token is not None
    assert rest.source.token.get_secret_value() == "s3cret-from-file"


def test_a_missing_secret_names_the_reference_not_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(SecretError) as raised:
        load_config(write(tmp_path, MINIMAL + 'password = "env://NOT_SET_ANYWHERE"\n'))
    assert raised.value.key == "source.password"
    assert "NOT_SET_ANYWHERE" in str(raised.value)


def test_secrets_never_show_in_the_settings_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_URL", "postgresql+psycopg://u:hunter2@db/sales")
    settings = load_config(
        write(tmp_path, MINIMAL.replace('"sqlite:///sales.db"', '"env://DB_URL"'))
    )
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


def test_allow_hosts_takes_every_documented_form(tmp_path: Path) -> None:
    entries = [
        "10.0.0.5:8080",
        "https://photos.internal:8443",
        "https://photos.internal",
        "[fd00::5]:8080",
    ]
    text = MINIMAL + f"\n[photos]\nallow_hosts = {entries!r}\n".replace("'", '"')
    assert load_config(write(tmp_path, text)).photos.allow_hosts == entries


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("10.0.0.5", "names no port"),
        ("photos.internal:0", "port 0"),
        ("ftp://10.0.0.5:21", "http or https"),
        ("10.0.0.5:8080/photos", "without a path"),
        ("shop@10.0.0.5:8080", "without a path or user"),
        ("fd00::5:8080", "in brackets"),
        ("10.0.0.5:99999", "not host:port"),
        (":8080", "names no host"),
    ],
)
def test_an_allow_hosts_entry_that_is_not_a_host_and_port_is_refused_at_load_naming_it(
    tmp_path: Path, entry: str, says: str
) -> None:
    text = MINIMAL + f'\n[photos]\nallow_hosts = ["{entry}"]\n'
    with pytest.raises(ConfigError, match=says) as raised:
        load_config(write(tmp_path, text))
    assert raised.value.key == "photos.allow_hosts"
    assert entry in raised.value.reason


def test_an_allow_networks_entry_that_is_not_a_range_is_refused_at_load(tmp_path: Path) -> None:
    text = MINIMAL + '\n[photos]\nallow_networks = ["10.0.0.300/8"]\n'
    with pytest.raises(ConfigError, match=re.escape("10.0.0.300/8")) as raised:
        load_config(write(tmp_path, text))
    assert raised.value.key == "photos.allow_networks"


def test_allow_hosts_can_be_set_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGX_PHOTOS__ALLOW_HOSTS", '["10.0.0.5:8080"]')
    assert load_config(write(tmp_path, MINIMAL)).photos.allow_hosts == ["10.0.0.5:8080"]
