"""Settings: precedence flag > env > file > default, and one-line errors for bad values."""
import pytest
from click.testing import CliRunner

from cli import cli
from tasks.redact import mask_url
from tasks.settings import Settings, SettingsError, load_settings


def write(tmp_path, text):
    path = tmp_path / "taskmon.toml"
    path.write_text(text)
    return path


def test_defaults():
    loaded = load_settings({}, environ={})
    assert loaded.settings == Settings()
    assert loaded.settings.broker_url == "redis://localhost:6379/0"
    assert loaded.settings.database_url == "sqlite:///taskmon.db"
    assert all(origin == "default" for *_, origin in loaded.rows())


def test_precedence_flag_over_env_over_file(tmp_path):
    path = write(tmp_path, 'timezone = "Asia/Shanghai"\nretention_days = 7\nsmtp_port = 2525\n')
    env = {"TASKMON_RETENTION_DAYS": "14", "TASKMON_SMTP_PORT": "587"}
    loaded = load_settings({"smtp_port": 465}, environ=env, config_path=path)
    s = loaded.settings
    assert (s.timezone, s.retention_days, s.smtp_port) == ("Asia/Shanghai", 14, 465)
    assert loaded.origins == {"timezone": "file", "retention_days": "env", "smtp_port": "flag"}


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, 'alert_recipients = ["ops@example.com", "dev@example.com"]\n')
    loaded = load_settings({}, environ={"TASKMON_CONFIG": str(path)})
    assert loaded.settings.alert_recipients == ("ops@example.com", "dev@example.com")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TASKMON_TIMEZONE": "Mars/Olympus"}, "timezone: unknown time zone"),
        ({"TASKMON_RETENTION_DAYS": "-1"}, "retention_days: must be 0 or more"),
        ({"TASKMON_RETENTION_DAYS": "ten"}, "retention_days: expected int"),
        ({"TASKMON_BROKER_URL": "redis://host:notaport/0"}, "broker_url: cannot parse URL"),
        ({"TASKMON_BROKER_URL": "kafka://host"}, "broker_url: unsupported URL"),
        ({"TASKMON_DATABASE_URL": "mysql://x/y"}, "database_url: unsupported database"),
        ({"TASKMON_DATABASE_URL": "::::"}, "database_url: cannot parse URL"),
        ({"TASKMON_SMTP_SECURITY": "tls13"}, "smtp_security"),
        ({"TASKMON_ALERT_RECIPIENTS": "nobody"}, "alert_recipients"),
    ],
)
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings({}, environ=env)


def test_unknown_key_and_bad_toml_in_file(tmp_path):
    with pytest.raises(SettingsError, match="unknown setting 'brokr_url'"):
        load_settings({}, environ={}, config_path=write(tmp_path, 'brokr_url = "x"\n'))
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings({}, environ={}, config_path=write(tmp_path, "= nope"))
    with pytest.raises(SettingsError, match="file not found"):
        load_settings({}, environ={}, config_path=tmp_path / "missing.toml")


def test_mask_url_hides_only_the_password():
    assert mask_url("postgresql+psycopg://app:s3cret@db:5432/x") == "postgresql+psycopg://app:***@db:5432/x"
    assert mask_url("redis://:pw@localhost:6379/0") == "redis://:***@localhost:6379/0"
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_config_command_shows_sources_and_masks_secrets(tmp_path, monkeypatch):
    path = write(tmp_path, 'smtp_password = "hunter2"\n')
    monkeypatch.setenv("TASKMON_BROKER_URL", "redis://:brokerpw@127.0.0.1:6380/1")
    result = CliRunner().invoke(cli, ["config", "--config", str(path), "--db", "postgresql+psycopg://u:dbpw@h/db", "--json"])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.output)
    assert data["broker_url"] == {"value": "redis://:***@127.0.0.1:6380/1", "source": "env"}
    assert data["database_url"] == {"value": "postgresql+psycopg://u:***@h/db", "source": "flag"}
    assert data["smtp_password"] == {"value": "***", "source": "file"}
    assert "hunter2" not in result.output and "brokerpw" not in result.output and "dbpw" not in result.output


@pytest.mark.parametrize("args", [["config", "--timezone", "Nowhere/Land"], ["db", "upgrade", "--db", "mysql://x/y"]])
def test_bad_setting_on_cli_is_one_line_exit_2(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output


@pytest.mark.parametrize("text, message", [
    ('[alert.failed]\nnames = ["billing.*"]\n',
     "config: unknown table [alert.failed] in {path} (did you mean [alerts.failed]?)"),
    ('[timeout]\n"reports.*" = 60\n', "config: unknown table [timeout] in {path} (did you mean [timeouts]?)"),
    ('brokr_url = "redis://x"\n', "config: unknown setting 'brokr_url' in {path} (did you mean 'broker_url'?)"),
    ('batch_sise = 10\n', "config: unknown setting 'batch_sise' in {path} (did you mean 'batch_size'?)"),
])
def test_an_unknown_key_or_table_in_the_config_file_is_a_one_line_error_exit_2(tmp_path, text, message):
    path = write(tmp_path, text)
    result = CliRunner().invoke(cli, ["config", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["Error: " + message.format(path=path)], result.output


def test_daemon_options_are_settings_flag_over_env_over_file(tmp_path):
    path = write(tmp_path, "batch_size = 1000\nflush_interval = 0.5\nprepare_processes = 0\nenable_events = false\n")
    env = {"TASKMON_BATCH_SIZE": "2000", "TASKMON_STATUS_INTERVAL": "2"}
    loaded = load_settings({}, environ=env, config_path=path).with_flags({"batch_size": 3000, "enable_events": None},
                                                                       environ=env)
    s = loaded.settings
    assert (s.batch_size, s.flush_interval, s.prepare_processes, s.status_interval, s.enable_events) == \
        (3000, 0.5, 0, 2.0, False)
    assert loaded.origins["batch_size"] == "flag" and loaded.origins["status_interval"] == "env"
    assert loaded.origins["enable_events"] == "file"


@pytest.mark.parametrize("env, message", [
    ({"TASKMON_BATCH_SIZE": "0"}, "batch_size: must be 1 to 100,000, got 0"),
    ({"TASKMON_BUFFER_EVENTS": "10"}, "buffer_events: must be 1,000 to 10,000,000, got 10"),
    ({"TASKMON_PREPARE_PROCESSES": "9"}, "prepare_processes: must be 0 to 8, got 9"),
    ({"TASKMON_FLUSH_INTERVAL": "0"}, "flush_interval: must be more than 0"),
    ({"TASKMON_ENABLE_EVENTS": "maybe"}, "enable_events: expected bool"),
])
def test_bad_daemon_settings_name_the_setting(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings({}, environ=env)


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "batch_size: must be 1 to 100,000, got 0"),
    (["--status-interval", "30"], "status_interval: must be less than heartbeat_stale_seconds (30), or every "
                                  "heartbeat is stale; got 30"),
])
def test_a_bad_run_flag_is_one_line_exit_2_before_anything_starts(sqlite_url, args, message):
    result = CliRunner().invoke(cli, ["run", "--db", sqlite_url, *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"Error: {message}"], result.output
