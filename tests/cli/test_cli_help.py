"""Every command and every benchmark explains every option (`--help` is the manual a
newcomer reads first), and each command's --help answers without loading a model."""

from __future__ import annotations

import argparse
import pkgutil

import pytest

from videokv import bench
from videokv.cli import COMMANDS, main

BENCHES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
                 and m.name != "memtrack")


def _parsers(argv: list[str], monkeypatch) -> list[argparse.ArgumentParser]:
    """The parser(s) a command builds: parse_args is stopped before anything runs."""
    seen: list[argparse.ArgumentParser] = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        main(argv)
    out = []
    for p in seen:
        out.append(p)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                out += list(a.choices.values())
    return out


@pytest.mark.parametrize("argv", [[c] for c in COMMANDS if c != "bench"] + [["bench", b] for b in BENCHES],
                         ids=lambda a: " ".join(a))
def test_every_option_has_help(argv, monkeypatch):
    parsers = _parsers(argv, monkeypatch)
    assert parsers, f"videokv {' '.join(argv)} parsed no arguments"
    missing = [f"{p.prog}: {'/'.join(a.option_strings) or a.dest}" for p in parsers for a in p._actions
               if not a.help and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    assert missing == []


def test_error_codes_are_snake_case_and_one_per_condition():
    """Every user-facing error names its condition in one style (the API's problem `code`),
    and the conditions the API also raises as problems use the same names."""
    import importlib
    import re

    from tests.test_layers import module_files
    from videokv.errors import VideoKVError

    for mod in module_files():
        importlib.import_module(mod)

    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    codes = {c.__name__: c.code for c in subclasses(VideoKVError)}
    bad = {n: c for n, c in codes.items() if not re.fullmatch(r"[a-z]+(_[a-z]+)*", c)}
    assert bad == {}
    assert codes["VideoNotFoundError"] == "video_not_found" and codes["JobNotFound"] == "job_not_found"
    assert codes["VideoNotReady"] == "video_not_ready" and codes["FingerprintMismatchError"] == "reingest_required"


def test_the_readme_settings_table_lists_every_setting():
    from tests.conftest import ROOT
    from videokv.settings import Settings

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings"):readme.index("## Layout")]
    missing = [f for f in Settings.model_fields if f"`VIDEOKV_{f.upper()}`" not in table]
    assert missing == []


@pytest.mark.parametrize("env,says", [
    ({"VIDEOKV_TOP_K": "abc"}, "VIDEOKV_TOP_K='abc': Input should be a valid integer"),
    ({"VIDEOKV_ORACLE": "bogus"}, "VIDEOKV_ORACLE='bogus': expected one of auto, dualenc, keyquery"),
    ({"VIDEOKV_TOKENS_PER_FRAME": "6"}, "trained with VIDEOKV_TOKENS_PER_FRAME=8, got 6"),
])
def test_a_bad_setting_is_one_sentence_and_exit_2(env, says, monkeypatch, capsys):
    from videokv.settings import get_settings
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    assert main(["ask", "some-video", "What digit?"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_demo_refuses_a_bad_mode_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--mode", "fast", "--workdir", str(tmp_path / "demo")])
    assert e.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
