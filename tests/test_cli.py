"""The ``keras-topomap`` command line as a user meets it: usage, help text, option names."""

import pytest

from keras_topomap import cli


def test_bare_command_prints_usage_and_exits_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: keras-topomap COMMAND")
    assert all(command in err for command in cli.COMMANDS)


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_flag_prints_usage_and_exits_0(capsys, flag):
    assert cli.main([flag]) == 0
    assert capsys.readouterr().out.startswith("usage: keras-topomap COMMAND")


def test_unknown_command_exits_2(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
