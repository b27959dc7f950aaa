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


def _parsers():
    from keras_topomap import demo, gradnap_cli, synthetic_demo, train
    from keras_topomap.datasets import build_tts_corpus

    return {
        "train": train.build_parser(),
        "demo": demo.build_parser(),
        "demo --synthetic": synthetic_demo.build_parser(),
        "gradnap": gradnap_cli.build_parser(),
        "gradnap-merge": gradnap_cli.build_merge_parser(),
        "build-corpus": build_tts_corpus.build_parser(),
    }


def test_every_option_has_help_and_shows_its_default():
    import argparse

    for command, parser in _parsers().items():
        assert parser.prog == f"keras-topomap {command}"
        assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, command
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), (command, action.option_strings)
            assert "(default" not in action.help, (command, action.option_strings)  # no twice
        text = parser.format_help()
        assert text.startswith(f"usage: keras-topomap {command}")
        assert "(default:" in text


def test_one_name_per_concept_old_spellings_still_parse():
    parsers = _parsers()
    for command, dest in (("train", "max_minutes"), ("demo", "minutes")):
        parser = parsers[command]
        assert vars(parser.parse_args(["--max-minutes", "3"]))[dest] == 3.0
        assert vars(parser.parse_args(["--minutes", "3"]))[dest] == 3.0
    for command, dest in (("train", "max_eval"), ("demo", "max_eval")):
        assert vars(parsers[command].parse_args(["--max-utterances", "5"]))[dest] == 5
        assert vars(parsers[command].parse_args(["--max-eval", "5"]))[dest] == 5
    required = ["--model", "m.keras", "--out", "o"]
    for flag in ("--max-eval", "--max-utterances"):
        assert parsers["gradnap"].parse_args(required + [flag, "5"]).max_utterances == 5
    for command in ("train", "demo --synthetic"):
        for flag in ("--n-permutations", "--permutations"):
            args = vars(parsers[command].parse_args([flag, "7"]))
            assert 7 in (args.get("n_permutations"), args.get("permutations"))


def test_readme_commands_use_existing_options():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    parsers = _parsers()
    found = 0
    for line in re.findall(r"^keras-topomap (\S+)([^#\n]*)", readme, flags=re.M):
        command, rest = line
        parser = parsers[command]
        known = {s for a in parser._actions for s in a.option_strings}
        for flag in re.findall(r"(?<!\S)(--[\w-]+)", rest):
            assert flag in known, f"README: keras-topomap {command} {flag}"
            found += 1
    assert found >= 3
