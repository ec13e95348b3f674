"""Attach configurations and the launch.json merge: comments kept, backups, bad files untouched."""

from __future__ import annotations

import codecs
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aml_debug_magics.launch import (
    LaunchJsonError,
    attach_config,
    compound,
    merge_into_launch_json,
    parse_jsonc,
)
from aml_debug_magics.node.announce import Announcement

NODE = Announcement(
    addresses=("10.0.0.4", "172.17.0.1"), port=5678, script="/mnt/azureml/cr/exe/wd/train.py",
    cwd="/mnt/azureml/cr/exe/wd", hostname="node-0", rank=0,
)

USER_FILE = """\
{
    // Use IntelliSense to learn about possible attributes.
    "version": "0.2.0",
    "configurations": [
        {
            "name": "Python: Current File", // my everyday config
            "type": "debugpy",
            "request": "launch",
            "program": "${file}",
        },
        /* kept for later */
        {
            "name": "Attach: train.py on node-0 rank 0",
            "type": "debugpy",
            "request": "attach",
            "connect": {"host": "10.0.0.9", "port": 1},
        },
    ],
}
"""


def test_attach_config_connects_to_the_first_address_with_mappings(tmp_path):
    config = attach_config(NODE, tmp_path)
    assert config["type"] == "debugpy" and config["request"] == "attach"
    assert config["connect"] == {"host": "10.0.0.4", "port": 5678}
    assert config["pathMappings"] == [
        {"localRoot": str(tmp_path.resolve()), "remoteRoot": "/mnt/azureml/cr/exe/wd"}
    ]
    assert config["justMyCode"] is True


def test_attach_config_never_connects_to_an_unroutable_host(tmp_path):
    listening_everywhere = Announcement(addresses=("0.0.0.0",), port=5678, script="/a/s.py")
    assert attach_config(listening_everywhere, tmp_path)["connect"]["host"] == "localhost"
    with pytest.raises(ValueError, match="not an address"):
        attach_config(NODE, tmp_path, host="0.0.0.0")
    tunnel = attach_config(NODE, tmp_path, host="localhost")
    assert tunnel["connect"] == {"host": "localhost", "port": 5678}


def test_connect_mode_gives_a_listen_config(tmp_path):
    outbound = Announcement(addresses=("10.0.0.1",), port=6000, mode="connect", script="/w/a.py")
    config = attach_config(outbound, tmp_path, just_my_code=False)
    assert config["listen"] == {"host": "10.0.0.1", "port": 6000}
    assert "connect" not in config
    assert config["justMyCode"] is False


def test_compound_names_every_rank(tmp_path):
    ranks = [attach_config(Announcement(("10.0.0.4",), 5678 + r, rank=r, script="/w/t.py",
                                        hostname="n"), tmp_path) for r in range(2)]
    assert compound("All ranks", ranks) == {
        "name": "All ranks",
        "configurations": ["Attach: t.py on n rank 0", "Attach: t.py on n rank 1"],
    }


def _lines_outside(text: str, name: str) -> list[str]:
    """Lines of text that are not inside the configuration called ``name``."""
    root = parse_jsonc(text)
    members = dict(root.items)
    node = next(n for n in members["configurations"].items if n.value.get("name") == name)
    return (text[: node.start] + text[node.end :]).splitlines()


def test_merge_replaces_by_name_and_keeps_everything_else_byte_for_byte(tmp_path):
    path = tmp_path / ".vscode" / "launch.json"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    config = attach_config(NODE, tmp_path)
    result = merge_into_launch_json(path, [config])
    merged = path.read_text()
    assert result.replaced == [config["name"]] and result.added == []
    assert _lines_outside(merged, config["name"]) == _lines_outside(USER_FILE, config["name"])
    assert "// my everyday config" in merged and "/* kept for later */" in merged
    parsed = parse_jsonc(merged).value
    assert [c["name"] for c in parsed["configurations"]] == [
        "Python: Current File", config["name"]]
    assert parsed["configurations"][1]["connect"] == {"host": "10.0.0.4", "port": 5678}
    assert result.backup is not None and result.backup.read_text() == USER_FILE


def test_merge_appends_a_new_config_and_adds_compounds(tmp_path):
    path = tmp_path / "launch.json"
    path.write_text(USER_FILE)
    ranks = [attach_config(Announcement(("10.0.0.4",), 5678 + r, rank=r, script="/w/t.py",
                                        hostname="n"), tmp_path) for r in range(2)]
    result = merge_into_launch_json(path, ranks, [compound("All ranks", ranks)])
    parsed = parse_jsonc(path.read_text()).value
    assert len(parsed["configurations"]) == 4
    assert parsed["compounds"][0]["configurations"] == [r["name"] for r in ranks]
    assert set(result.added) == {"All ranks", *[r["name"] for r in ranks]}
    assert USER_FILE.splitlines()[1] in path.read_text()


@pytest.mark.parametrize("before", [None, "", '{"version": "0.2.0"}', '{"configurations": []}',
                                    "{}"])
def test_merge_into_missing_empty_or_bare_files(tmp_path, before):
    path = tmp_path / ".vscode" / "launch.json"
    if before is not None:
        path.parent.mkdir()
        path.write_text(before)
    config = attach_config(NODE, tmp_path)
    result = merge_into_launch_json(path, [config])
    parsed = json.loads(path.read_text())  # plain JSON when we wrote it all
    assert parsed["configurations"] == [config]
    assert (result.backup is None) == (before is None)


def test_an_unparseable_file_is_left_untouched_and_the_error_names_the_line(tmp_path):
    path = tmp_path / "launch.json"
    broken = (
        '{\n  "version": "0.2.0",\n  "configurations": [\n    {"name": "x" "type": 1}\n  ]\n}\n'
    )
    path.write_bytes(broken.encode())
    with pytest.raises(LaunchJsonError, match=r"line 4, column 18: expected ','") as error:
        merge_into_launch_json(path, [attach_config(NODE, tmp_path)])
    assert "left unchanged" in str(error.value)
    assert path.read_bytes() == broken.encode()
    assert list(tmp_path.iterdir()) == [path]  # no backup, no temporary file left


def test_backups_never_overwrite_each_other(tmp_path):
    path = tmp_path / "launch.json"
    path.write_text(USER_FILE)
    first = merge_into_launch_json(path, [attach_config(NODE, tmp_path)]).backup
    second = merge_into_launch_json(path, [attach_config(NODE, tmp_path, name="b")]).backup
    assert first != second and first.exists() and second.exists()
    assert first.read_text() == USER_FILE


def test_jsonc_parser_reads_what_vscode_reads():
    text = '// c\n{"a": [1, 2,], /* x */ "b": {"c": "//not a comment",},}'
    assert parse_jsonc(text).value == {"a": [1, 2], "b": {"c": "//not a comment"}}
    with pytest.raises(LaunchJsonError, match="never closed"):
        parse_jsonc('{"a": 1 /* open')
    with pytest.raises(LaunchJsonError, match=re.escape("line 1, column 7")):
        parse_jsonc('{"a": nope}', Path("x.json"))


def test_a_symlinked_launch_json_is_written_through_to_its_target(tmp_path):
    shared = tmp_path / "dotfiles" / "launch.json"
    shared.parent.mkdir()
    shared.write_text(USER_FILE)
    link = tmp_path / ".vscode" / "launch.json"
    link.parent.mkdir()
    link.symlink_to(shared)
    config = attach_config(NODE, tmp_path, name="via link")
    merge_into_launch_json(link, [config])
    assert link.is_symlink() and link.resolve() == shared
    assert "via link" in shared.read_text()
    assert sorted(p.name for p in link.parent.iterdir()) == ["launch.json"]


def test_a_read_only_launch_json_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "launch.json"
    path.write_text(USER_FILE)
    path.chmod(0o444)
    with pytest.raises(LaunchJsonError, match=r"launch.json is read-only: make it writable"):
        merge_into_launch_json(path, [attach_config(NODE, tmp_path)])
    assert path.read_text() == USER_FILE and (path.stat().st_mode & 0o777) == 0o444
    assert list(tmp_path.iterdir()) == [path]


def test_twenty_concurrent_merges_keep_twenty_entries(tmp_path):
    path = tmp_path / ".vscode" / "launch.json"
    configs = [attach_config(NODE, tmp_path, name=f"rank {n}") for n in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(lambda c: merge_into_launch_json(path, [c], backup_tag="s"), configs))
    names = [c["name"] for c in json.loads(path.read_text())["configurations"]]
    assert sorted(names) == sorted(c["name"] for c in configs)


def test_one_backup_per_session_holds_what_was_there_before_it(tmp_path):
    path = tmp_path / "launch.json"
    path.write_text(USER_FILE)
    for step in range(16):
        merge_into_launch_json(path, [attach_config(NODE, tmp_path, name=f"step {step}")],
                               backup_tag="20261201-1200-0001")
    backups = [p for p in tmp_path.iterdir() if p.suffix == ".bak"]
    assert [b.name for b in backups] == ["launch.json.20261201-1200-0001.bak"]
    assert backups[0].read_text() == USER_FILE


def test_bom_line_endings_and_mode_are_kept_and_a_new_file_is_0644(tmp_path):
    path = tmp_path / "launch.json"
    path.write_bytes(codecs.BOM_UTF8 + USER_FILE.replace("\n", "\r\n").encode())
    path.chmod(0o640)
    merge_into_launch_json(path, [attach_config(NODE, tmp_path, name="added")])
    written = path.read_bytes()
    assert written.startswith(codecs.BOM_UTF8) and b"added" in written
    assert written.count(b"\n") == written.count(b"\r\n")
    assert (path.stat().st_mode & 0o777) == 0o640
    fresh = tmp_path / "new" / "launch.json"
    old_umask = os.umask(0o022)
    try:
        merge_into_launch_json(fresh, [attach_config(NODE, tmp_path)])
    finally:
        os.umask(old_umask)
    assert (fresh.stat().st_mode & 0o777) == 0o644
