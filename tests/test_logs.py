"""Log tailing over real HTTP: append blobs in Azurite read through real SAS URLs."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import pytest

from aml_debug_magics.logs import BlobTail, LogUnavailable, RunLogs, SasExpired, stdout_logs
from aml_debug_magics.node.announce import (
    Announcement,
    PortClosed,
    format_announcement,
    format_port_closed,
    tag_key,
)
from aml_debug_magics.redaction import redact


def test_reads_only_new_bytes_and_whole_lines(azurite):
    log = azurite.append_blob("runs/a/user_logs/std_log.txt", "epoch 1\nepoch")
    tail = BlobTail(log.url())
    assert tail.read_new() == ["epoch 1"]
    assert tail.read_new() == []  # nothing new: 416 from the store, no bytes
    log.append(" 2\r\nepoch 3\n")
    assert tail.read_new() == ["epoch 2", "epoch 3"]
    assert tail.bytes_read == log.size == tail.offset


def test_a_log_not_uploaded_yet_is_missing_not_an_error(azurite):
    tail = BlobTail(azurite.sas_url("runs/b/user_logs/std_log.txt"))
    assert tail.read_new() == [] and tail.missing
    azurite.append_blob("runs/b/user_logs/std_log.txt", "hello\n")
    assert tail.read_new() == ["hello"] and not tail.missing


def test_an_expired_sas_says_so_without_the_signature(azurite):
    log = azurite.append_blob("runs/c/user_logs/std_log.txt", "x\n")
    url = log.url(expires_in=-60)
    with pytest.raises(SasExpired) as caught:
        BlobTail(url).read_new()
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["sig"][0]
    assert signature not in str(caught.value) and "sig=REDACTED" in str(caught.value)


def test_transient_failures_are_retried_a_bounded_number_of_times(azurite):
    log = azurite.append_blob("runs/d/user_logs/std_log.txt", "ready\n")
    failures = []

    def flaky(request, timeout):
        if len(failures) < 2:
            failures.append(503)
            raise urllib.error.HTTPError(request.full_url, 503, "busy", {}, None)
        return urllib.request.urlopen(request, timeout=timeout)

    assert BlobTail(log.url(), opener=flaky, retry_pause=0.01).read_new() == ["ready"]

    def down(request, timeout):
        raise urllib.error.URLError("connection reset")

    tail = BlobTail(log.url(), opener=down, retries=2, retry_pause=0.01)
    with pytest.raises(LogUnavailable, match="after 2 retries"):
        tail.read_new()
    assert tail.requests == 3


def test_log_layouts_and_node_indexes():
    assert stdout_logs({"azureml-logs/70_driver_log.txt": "u", "logs/x.txt": "v"}) == {
        "azureml-logs/70_driver_log.txt": 0
    }
    both = {
        "azureml-logs/70_driver_log_0.txt": "a",
        "user_logs/std_log_process_0.txt": "b",
        "user_logs/std_log_process_1.txt": "c",
    }
    assert stdout_logs(both) == {
        "user_logs/std_log_process_0.txt": 0, "user_logs/std_log_process_1.txt": 1
    }
    assert redact("see https://x/y?sv=1&SIG=abc%2F&se=2 now") == (
        "see https://x/y?sv=1&SIG=REDACTED&se=2 now"
    )


def test_every_rank_of_a_multi_node_job_is_found_and_tied_to_its_rank():
    """The current runtime on several nodes writes ``std_log_node_N_process_M.txt`` (process M
    of node N); indexes may be zero-padded (``std_log_process_00.txt``, as azure-ai-ml's own
    log-streaming tests list them)."""
    on_nodes = {f"user_logs/std_log_node_{n}_process_{p}.txt": "u" for n in (0, 1) for p in (0, 1)}
    assert stdout_logs({**on_nodes, "user_logs/std_log.txt": "u", "system_logs/x.txt": "v"}) == {
        "user_logs/std_log.txt": 0,
        "user_logs/std_log_node_0_process_0.txt": 0, "user_logs/std_log_node_0_process_1.txt": 1,
        "user_logs/std_log_node_1_process_0.txt": 2, "user_logs/std_log_node_1_process_1.txt": 3,
    }
    padded = {f"user_logs/std_log_process_0{p}.txt": "u" for p in range(3)}
    assert sorted(stdout_logs(padded).values()) == [0, 1, 2]


def test_a_guide_line_on_the_second_node_is_told_with_that_nodes_rank(azurite):
    """A script that prints the guide's ``ip_address:`` line has no rank of its own: the log it
    is in says which rank it is."""
    run = StepRun()
    news = []
    logs = RunLogs(run, lambda *_: None, news.append)
    names = [f"user_logs/std_log_node_{n}_process_0.txt" for n in (0, 1)]
    blobs = [azurite.append_blob(f"runs/g/{name}", "starting\n") for name in names]
    run.log_files = {name: blob.url() for name, blob in zip(names, blobs, strict=True)}
    blobs[1].append("Timeout for debug connection: 300\nip_address: 10.0.0.9\n")
    logs.poll()
    assert [(a.rank, a.addresses) for a in news] == [(1, ("10.0.0.9",))]


class StepRun:
    """Stands in for an Azure ML step run: the SDK's get_details()/get_tags() shapes, nothing
    more. The log files it lists are real blobs behind real SAS URLs."""

    def __init__(self) -> None:
        self.log_files: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.details_calls = 0

    def get_details(self):
        self.details_calls += 1
        return {"runId": "step_1", "status": "Running", "logFiles": dict(self.log_files)}

    def get_tags(self):
        return dict(self.tags)


def announcement(rank: int, port: int) -> Announcement:
    return Announcement(addresses=(f"10.0.0.{4 + rank}",), port=port, rank=rank,
                        attach_deadline=1.8e9, script="/mnt/azureml/cr/code/train.py")


def test_run_logs_follow_every_node_and_refresh_an_expired_sas(azurite):
    run = StepRun()
    lines, news = [], []
    logs = RunLogs(run, lambda line, node: lines.append((node, line)), news.append)
    logs.poll()
    assert logs.describe() == "no log file listed yet" and news == []

    nodes = [azurite.append_blob(f"runs/e/azureml-logs/70_driver_log_{n}.txt") for n in (0, 1)]
    run.log_files = {n.name.split("runs/e/")[1]: n.url() for n in nodes}
    nodes[1].append("starting\n" + format_announcement(announcement(1, 5679)) + "\n")
    logs.poll()
    assert (1, "starting") in lines
    assert [(a.rank, a.port) for a in news] == [(1, 5679)]

    nodes[0].append(format_announcement(announcement(0, 5678)) + "\nip_address: 10.0.0.4\n")
    run.log_files[nodes[0].name.split("runs/e/")[1]] = nodes[0].url(expires_in=-60)
    refreshed = {n.name.split("runs/e/")[1]: n.url() for n in nodes}
    calls = run.details_calls

    def fresh_urls_after_first_call():
        run.log_files = refreshed if run.details_calls > calls else run.log_files
        return {"logFiles": dict(run.log_files)}

    run.get_details = lambda: (setattr(run, "details_calls", run.details_calls + 1),
                               fresh_urls_after_first_call())[1]
    logs.poll()
    assert [(a.rank, a.port) for a in news] == [(1, 5679), (0, 5678)]  # guide line: not twice
    assert logs.problem == ""
    assert logs.bytes_read == sum(n.size for n in nodes)


def test_run_logs_read_the_announcement_from_tags_when_logs_are_late():
    run = StepRun()
    news = []
    logs = RunLogs(run, lambda *_: None, news.append)
    run.tags = {tag_key(0): format_announcement(announcement(0, 5678)), "other": "x"}
    logs.poll()
    logs.poll()
    assert [(a.rank, a.addresses) for a in news] == [(0, ("10.0.0.4",))]


def test_run_logs_pass_on_a_closed_port_once(azurite):
    run = StepRun()
    news = []
    logs = RunLogs(run, lambda *_: None, news.append)
    log = azurite.append_blob("runs/c/user_logs/std_log.txt")
    run.log_files = {"user_logs/std_log.txt": log.url()}
    closed = format_port_closed(PortClosed("the debugger left: the port is closed for good", 0))
    log.append(format_announcement(announcement(0, 5678)) + "\n" + closed + "\n" + closed + "\n")
    logs.poll()
    logs.poll()
    assert [type(n).__name__ for n in news] == ["Announcement", "PortClosed"]
    assert news[1].reason == "the debugger left: the port is closed for good"
