"""Azure ML's run and job statuses: in words for the row, where they put the row, and which of
them end a run.

In: a status string as run history gives it (SDK v1 ``RunStatus``, SDK v2 ``JobStatus``). Out:
the row's words and :class:`~aml_debug_magics.records.Status`, and the statuses the SDK's own
waiting loops wait through, read from the installed SDK (every other status ends a run).
"""

from __future__ import annotations

import contextlib
import re

from aml_debug_magics.records import Status

SUCCEEDED = {"Completed", "Finished"}  # a run's and an SDK v1 PipelineRun's "it worked"
STATUS_WORDS = {  # Azure ML's run statuses (SDK v1 RunStatus, SDK v2 JobStatus), as rows say them
    "NotStarted": "not started",
    "Queued": "queued: waiting for the compute's nodes",
    "Preparing": "preparing: building the image and the environment",
    "Provisioning": "provisioning: the compute is being created",
    "Starting": "starting",
    "Running": "running",
    "Finalizing": "finalizing: collecting outputs",
    "CancelRequested": "cancel requested",
    "Completed": "completed",
    "Finished": "finished",
    "Failed": "failed",
    "Canceled": "canceled",
    "NotResponding": "not responding: no heartbeat from the run lately",
    "Unapproved": "waiting for approval",
    "Pausing": "pausing",
    "Paused": "paused",
    "Unknown": "in a state Azure ML calls unknown",
    "PartiallyExecuted": "partly run",
    "Bypassed": "bypassed",
}
BEFORE_START = {"NotStarted": Status.QUEUED, "Queued": Status.QUEUED,
                "Unapproved": Status.QUEUED, "Preparing": Status.STARTING,
                "Provisioning": Status.STARTING, "Starting": Status.STARTING}
NEVER_STARTED = {"", "NotStarted", "Queued"}


def in_words(status: str) -> str:
    """An Azure ML status as the row says it: ``NotResponding`` -> ``not responding: ...``;
    a status this table does not know yet is split into its words."""
    return STATUS_WORDS.get(status) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", status).lower()


def going_on_statuses(sdk: str) -> frozenset[str]:
    """The statuses the SDK's own waiting loops wait through; every other status ends a run.

    SDK v1: ``Run.wait_for_completion`` waits through ``RunStatus``'s running and
    post-processing lists, ``PipelineRun.wait_for_completion`` through its ``RUNNING_STATES``.
    SDK v2: azure-ai-ml's in-progress and post-processing lists, as ``jobs.stream`` waits.
    """
    if sdk == "v2":  # azure-ai-ml: in progress or post-processing, and not in its terminal list
        from azure.ai.ml.operations._run_history_constants import RunHistoryConstants as listed

        going = {*listed.IN_PROGRESS_STATUSES, *listed.POST_PROCESSING_STATUSES}
        return frozenset(going - set(listed.TERMINAL_STATUSES))
    from azureml._restclient.constants import RunStatus

    going = {*RunStatus.get_running_statuses(), *RunStatus.get_post_processing_statuses()}
    with contextlib.suppress(ImportError):  # azureml-pipeline-core: PipelineRun's own loop
        from azureml.pipeline.core.run import RUNNING_STATES

        going.update(RUNNING_STATES)
    return frozenset(going)


def row_status(status: str, ended: bool) -> Status:
    """Where an Azure ML status puts a row: an ended run finished (it succeeded), stopped
    (canceled or paused) or failed (anything else that ends it)."""
    if ended:
        if status in SUCCEEDED:
            return Status.FINISHED
        return Status.STOPPED if status in ("Canceled", "Paused") else Status.FAILED
    return BEFORE_START.get(status, Status.RUNNING)
