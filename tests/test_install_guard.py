from importlib import metadata

from typer.testing import CliRunner

from lens.cli import app
from lens.runtime import onnxruntime_install


def test_cli_refuses_to_run_on_mixed_onnxruntime_installs(monkeypatch):
    real = metadata.distribution

    def both_installed(name):
        return real("onnxruntime") if name == "onnxruntime-gpu" else real(name)

    monkeypatch.setattr(onnxruntime_install.metadata, "distribution", both_installed)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["undistort", "--help"])
    assert result.exit_code == 2
    assert "both onnxruntime and onnxruntime-gpu are installed" in result.output
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in result.output


def test_single_install_passes():
    assert onnxruntime_install.installed_onnxruntime_distributions() == ["onnxruntime"]
    assert onnxruntime_install.conflict_message() is None
