"""The magics: parse what the user typed, hand a typed request to a session, show it.

No Azure calls, no threads and no JSON here; errors a user can fix become one line.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Enum, Float, Int, Unicode

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.redaction import redact

TARGETS = ("local", "azureml")
VIA = ("listen", "storage", "auto")


def one_line_errors(magic: Callable[..., Any]) -> Callable[..., Any]:
    """Expected errors become IPython's one-line UsageError, never a traceback, and never with
    a SAS signature (a dataset's URL, an ``--input`` the user pasted)."""

    @functools.wraps(magic)
    def wrapper(self: AmlDebugMagics, line: str) -> Any:
        try:
            return magic(self, line)
        except DebugInputError as error:
            raise UsageError(redact(str(error))) from None

    return wrapper


def session_options(magic: Callable[..., Any]) -> Callable[..., Any]:
    """The options every debugging magic shares."""
    for decorator in reversed([
        argument("--target", choices=TARGETS, help="where to run: local (this machine, the "
                 "default) or azureml"),
        argument("--timeout", type=float, help="seconds to wait for a debugger before the "
                 "script runs on without one (default: AmlDebugMagics.timeout, 300)"),
        argument("--port", type=int, help="debug port on 127.0.0.1 (default 0: any free port)"),
        argument("--connect", metavar="HOST:PORT", help="connect out to a VS Code that listens "
                 "there instead of opening a port"),
        argument("--workspace", metavar="VARIABLE", help="azureml target: a variable holding "
                 "the Workspace (default: Workspace.from_config())"),
        argument("--experiment", help="azureml target: the experiment to submit to "
                 "(default: aml-debug)"),
        argument("--input", action="append", default=[], metavar="NAME=PATH", help="local "
                 "target: a local file or folder for the DataReference, dataset or DataPath "
                 "parameter named NAME (repeat for more); inputs without one are downloaded "
                 "once through the workspace"),
        argument("--allow", default="auto", metavar="ADDR|CIDR[,...]|any", help="azureml "
                 "target: who may attach to the node's debug port (default: this machine's "
                 "addresses and the node itself, where an SSH tunnel arrives; node: the node "
                 "itself; any: everyone who reaches it)"),
        argument("--env", choices=("job", "kernel"), default="job", help="local target: "
                 "where the step's Python runs: job (the default: a layer of the packages its "
                 "environment declares over the kernel's; pip in its command installs there) "
                 "or kernel (the kernel's environment as it is)"),
        argument("--ranks", default="0", help="which ranks of a distributed step wait for a "
                 "debugger: 0 (default), all, or 0,2; the local target runs every rank"),
        argument("--via", choices=VIA, help="azureml target: how the debugger reaches the "
                 "node: listen (its port), storage (through the workspace's default blob "
                 "storage: no network path to the node needed), auto (the port if reachable "
                 "from here, else storage). Default: AmlDebugMagics.via, auto; where the "
                 "relay's blobs cannot be made (no role on the storage account), for --ranks "
                 "all of a step that declares no distribution, a parallel step or --connect, "
                 "the default listens and the panel says why"),
        argument("--write-launch-json", action="store_true", help="write each attach config "
                 "into .vscode/launch.json as soon as it is known (a backup is kept)"),
        argument("--debug-here", action="store_true", help="open the debugger in this "
                 "notebook on each debugged step once it waits (as the row's Debug here button "
                 "does; %%aml_debug_step drives it as text)"),
        argument("--post-mortem", metavar="SECONDS|off", help="when a debugged script fails "
                 "with no debugger attached, how long it waits for one, stopped at the "
                 "exception, before it exits as python would (default: "
                 "AmlDebugMagics.post_mortem, else the attach window, --timeout; off: exit "
                 "at once)"),
        argument("--stop", action="store_true", help="stop the running session and exit"),
    ]):
        magic = decorator(magic)
    return magic


@magics_class
class AmlDebugMagics(Magics):
    """Debug Azure ML pipeline steps and scripts, on this machine or on Azure ML compute."""

    timeout = Float(300.0, help="Seconds to wait for a debugger to attach.").tag(config=True)
    port = Int(0, help="Debug port for the local target; 0 picks a free one.").tag(config=True)
    target = Enum(TARGETS, default_value="local", help="Where steps run.").tag(config=True)
    just_my_code = Bool(True, help="Step through your own code only.").tag(config=True)
    launch_json = Unicode(
        ".vscode/launch.json", help="The launch.json the panel writes into."
    ).tag(config=True)
    view = Enum(
        ("auto", "widgets", "text"), default_value="auto",
        help="How sessions show: widgets in notebooks, text in a terminal (auto).",
    ).tag(config=True)
    via = Enum(
        VIA, default_value="auto",
        help="How the debugger reaches an Azure ML node when no --via is typed (auto: its port "
        "if reachable, else the storage relay; listen where the relay cannot be made).",
    ).tag(config=True)

    post_mortem = Unicode(
        "", help="Seconds a debugged script that failed with no debugger attached waits for "
        "one at its exception, or off; empty: as long as the attach window (--timeout).",
    ).tag(config=True)

    cache_limit = Int(
        5 * 1024**3, help="Bytes the local target's job environments may hold in the cache; "
        "the least recently used go first.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        if shell is not None and getattr(shell, "config", None) is not None:
            self.update_config(shell.config)

    # -- %aml_debug_pipeline --------------------------------------------------------------

    @magic_arguments()
    @argument("pipeline", nargs="?", help="a variable holding an Azure ML Pipeline, a list of "
              "steps, or one PythonScriptStep")
    @argument("--step", action="append", metavar="NAME", help="a step to debug (repeat for "
              "more; default: every PythonScriptStep and ParallelRunStep); the others run "
              "without a debugger")
    @argument("--mini-batches", type=int, metavar="N", help="local target: a parallel step "
              "runs only its first N mini-batches")
    @argument("--params", metavar="NAME=VALUE[,...]", help="local target: the point of its "
              "search space a debugged HyperDriveStep's one trial runs (default: each "
              "parameter's first point)")
    @session_options
    @line_magic
    @one_line_errors
    def aml_debug_pipeline(self, line: str) -> None:
        """Run a pipeline's steps with a debugger waiting in the chosen ones.

        On the local target the steps run here, one after another in dependency order, each in
        its source_directory; PipelineData and OutputFileDatasetConfig become local folders.
        The panel shows where to attach and how long is left.

        Example: %aml_debug_pipeline my_pipeline --step train --timeout 300
        """
        from aml_debug_magics.sources import sdk_v1 as steps
        from aml_debug_magics.sources.parallel import check_mini_batches

        args = self._parse(self.aml_debug_pipeline, line)
        if args.stop:
            return self._stop("pipeline")
        if not args.pipeline:
            raise DebugInputError("give the pipeline: %aml_debug_pipeline VARIABLE [--step NAME]")
        pipeline = self._variable(args.pipeline)
        found = steps.steps_of(pipeline, args.pipeline)
        debugged = steps.pick_steps(found, args.step)
        specs = steps.read_steps(
            found, debugged, base_directory=Path.cwd(), target=self._target(args),
            params=args.params,
        )
        if args.params and not any(spec.trial for spec in specs if spec.debug):
            raise DebugInputError("--params is for a sweep: debug a HyperDriveStep with --step")
        submit: dict[str, Any] = {}
        if self._target(args) == "azureml" and steps.is_pipeline(pipeline):
            from aml_debug_magics.targets.workspace import pipeline_workspace

            submit = {"submitted": pipeline}  # its settings and workspace go with the submit
            if not args.workspace:
                submit["workspace"] = pipeline_workspace(pipeline)
        submit["mini_batches"] = check_mini_batches(specs, args.mini_batches, self._target(args))
        self._open("pipeline", f"%aml_debug_pipeline {args.pipeline}", specs, args, **submit)

    # -- %aml_debug_run -------------------------------------------------------------------

    @magic_arguments()
    @argument("command", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS...] | CONFIG",
              help="a script and its arguments, or a variable holding a ScriptRunConfig or a "
              "HyperDriveConfig (options go before a script; before or after a variable)")
    @argument("--params", metavar="NAME=VALUE[,...]", help="a HyperDriveConfig: the point of "
              "its search space the trial runs (default: each parameter's first point)")
    @session_options
    @line_magic
    @one_line_errors
    def aml_debug_run(self, line: str) -> None:
        """Run one script with a debugger waiting, as Azure ML's local run would, without Docker.

        Example: %aml_debug_run --timeout 120 train.py --epochs 3
        """
        from aml_debug_magics.sources import sdk_v1 as steps
        from aml_debug_magics.sources.sweep import is_sweep

        args = self._parse(self.aml_debug_run, line)
        if args.stop:
            return self._stop("run")
        if not args.command:
            raise DebugInputError("give a script (and its arguments) or a ScriptRunConfig variable")
        first, rest = args.command[0], args.command[1:]
        if first.isidentifier() and first in self.shell.user_ns and rest:
            args = self._options_after_variable(line, first, rest)
            rest = []
        if first.isidentifier() and first in self.shell.user_ns and is_sweep(
            self._variable(first)
        ):
            spec = steps.read_hyperdrive(
                self._variable(first), first, args.params, base_directory=Path.cwd(),
                target=self._target(args), namespace=self.shell.user_ns,
            )
        elif args.params:
            raise DebugInputError("--params is for a sweep: give a HyperDriveConfig variable")
        elif first.isidentifier() and first in self.shell.user_ns:
            spec = steps.read_script_run(
                self._variable(first), first, base_directory=Path.cwd(), target=self._target(args),
                namespace=self.shell.user_ns,
            )
        elif self._target(args) != "local":
            raise DebugInputError(
                "--target azureml needs a ScriptRunConfig variable (it names the compute target)"
            )
        else:
            spec = steps.script_spec(first, rest, base_directory=Path.cwd())
        self._open("run", f"%aml_debug_run {shlex.join(args.command)}", [spec], args)

    # -- %aml_debug_job (SDK v2) ----------------------------------------------------------

    @magic_arguments()
    @argument("job", nargs="?", help="a variable holding an SDK v2 command(...) job, or a "
              "PipelineJob (from a @dsl.pipeline function or load_job of a pipeline YAML)")
    @argument("--node", action="append", metavar="NAME", help="a pipeline node to debug, by "
              "its name in the pipeline (its variable's in a pipeline function, its key under "
              "jobs: in YAML; OUTER.INNER inside a nested pipeline); repeat for more; default: "
              "every command node that starts Python; the others run as written")
    @argument("--call", action="append", default=[], metavar="NODE=N", help="which Python "
              "command of a node's command line waits for the debugger, counted from 1 (default "
              "1: the first, e.g. in `python prep.py && python train.py`); the rest of the line "
              "runs as written")
    @argument("--params", metavar="NAME=VALUE[,...]", help="a sweep (alone or as a pipeline "
              "node): the point of its search space the one trial runs (default: each "
              "parameter's first point)")
    @argument("--mini-batches", type=int, metavar="N", help="local target: a parallel node "
              "runs only its first N mini-batches")
    @session_options
    @line_magic
    @one_line_errors
    def aml_debug_job(self, line: str) -> None:
        """Run an Azure ML SDK v2 job's command nodes with a debugger waiting in the chosen ones.

        On the local target each node's command runs here as Azure ML runs it: through bash, in
        its code folder (read from the folder of the YAML that declares it), its ${{inputs.X}}
        and ${{outputs.Y}} replaced (outputs become local folders handed to the nodes that read
        them), python meaning this kernel's interpreter, in dependency order. In a debugged node
        only one Python command is wrapped by the debugger (--call NODE=N picks which); a node
        that starts no Python runs as written. --input NODE.NAME=PATH gives one node's input
        its own local copy where several nodes read inputs of the same name.

        Example: %aml_debug_job pipeline_job --node train --timeout 300
        """
        from aml_debug_magics.sources import sdk_v2
        from aml_debug_magics.sources.parallel import check_mini_batches
        from aml_debug_magics.sources.sweep import is_sweep, sweep_trial_job

        args = self._parse(self.aml_debug_job, line)
        if args.stop:
            return self._stop("job")
        if not args.job:
            raise DebugInputError("give the job: %aml_debug_job VARIABLE [--node NAME]")
        job = self._variable(args.job)
        target = self._target(args)
        notes: list[str] = []
        point = None
        if is_sweep(job):  # one trial, as a plain command job
            job, point = sweep_trial_job(job, args.params)
        specs = sdk_v2.read_job(job, args.job, args.node, base_directory=Path.cwd(),
                                target=target, calls=args.call, notes=notes, params=args.params)
        if point is not None:
            specs[0].trial = point.describe()
        elif args.params and not any(spec.trial for spec in specs):
            raise DebugInputError(f"--params is for a sweep: {args.job!r} is no sweep and runs "
                                  "none")
        for note in notes:
            print(redact(note))
        submit: dict[str, Any] = {
            "mini_batches": check_mini_batches(specs, args.mini_batches, target)
        }
        if target == "azureml":  # through an MLClient, the job as a whole
            from aml_debug_magics.targets.azureml_v2 import find_ml_client

            workspace = find_ml_client(self.shell.user_ns, args.workspace)
            submit.update(sdk="v2", submitted=job, workspace=workspace)
        elif args.workspace:  # the local target reads registered environments through it
            from aml_debug_magics.targets.azureml_v2 import find_ml_client

            submit["workspace"] = find_ml_client(self.shell.user_ns, args.workspace)
        self._open("job", f"%aml_debug_job {args.job}", specs, args, **submit)

    # -- %aml_debug_deploy ----------------------------------------------------------------

    @magic_arguments()
    @argument("deployment", nargs="?", help="a variable holding an SDK v2 "
              "ManagedOnlineDeployment or KubernetesOnlineDeployment (instead of --entry-script)")
    @argument("--entry-script", metavar="SCORE_PY", help="the scoring script (init() and run())")
    @argument("--source-dir", metavar="DIR", help="the folder served as the app root (default: "
              "the entry script's folder)")
    @argument("--model-dir", metavar="DIR", help="the folder AZUREML_MODEL_DIR points to")
    @argument("--target", choices=("local", "docker", "azureml"), help="local: the Azure ML "
              "inference server here (default); docker: run --image; azureml: Model.package, "
              "then docker")
    @argument("--timeout", type=float, help="with --wait-in-init: seconds to wait for a debugger "
              "before init() runs anyway (default: AmlDebugMagics.timeout)")
    @argument("--port", type=int, help="debug port on 127.0.0.1 (default 0: any free port)")
    @argument("--scoring-port", type=int, default=0, help="scoring port on 127.0.0.1 (default: "
              "any free port)")
    @argument("--wait-in-init", action="store_true", help="hold init() until a debugger attaches "
              "(or the timeout passes), to step through it")
    @argument("--sample-request", metavar="FILE_OR_JSON", help="the body the panel's Send test "
              "request button posts")
    @argument("--image", help="docker target: the image to run (e.g. what Model.package pulled)")
    @argument("--model", action="append", default=[], metavar="NAME[:VERSION]", help="azureml "
              "target: a registered model to package (repeat for more); local target, with "
              "--model-dir: lay it out as azureml-models/NAME/VERSION for Model.get_model_path")
    @argument("--workspace", metavar="VARIABLE", help="azureml target: the Workspace variable; "
              "an SDK v2 deployment's registered model: the MLClient to download it through")
    @argument("--debug-here", action="store_true", help="open the debugger in this notebook "
              "once the server waits (the row's Debug here button); a breakpoint in run() "
              "stops in the worker, shown as its own process")
    @argument("--input", metavar="PATH", help="a batch deployment: the folder (or file) of "
              "files it scores here")
    @argument("--mini-batches", type=int, metavar="N", help="a batch deployment: run only its "
              "first N mini-batches")
    @argument("--stop", action="store_true", help="stop the running session and exit")
    @line_magic
    @one_line_errors
    def aml_debug_deploy(self, line: str) -> None:
        """Serve a scoring script with a debugger in the inference server's worker.

        A breakpoint in run() stops on each scoring request; with --wait-in-init, init() waits
        for the debugger. The panel shows the scoring URL, the health, and a Send test request
        button.

        Example: %aml_debug_deploy --entry-script score.py --model-dir model
                 --sample-request '{"data": [[1, 2]]}'
        Example: %aml_debug_deploy blue_deployment --sample-request sample-request.json
        Example: %aml_debug_deploy batch_deployment --input data/
        """
        from aml_debug_magics.deploy import make_deployment
        from aml_debug_magics.records import StepSpec
        from aml_debug_magics.sources.batch import is_batch_deployment

        args = self._parse(self.aml_debug_deploy, line)
        if args.stop:
            return self._stop("deploy")
        target = args.target or "local"
        if args.deployment and is_batch_deployment(self._variable(args.deployment)):
            return self._batch_deployment(args, target)
        if args.input is not None or args.mini_batches is not None:
            raise DebugInputError("--input and --mini-batches are for a batch deployment "
                                  "(%aml_debug_deploy BATCH_DEPLOYMENT --input PATH)")
        args.input = []  # a scoring script reads no step inputs
        if args.deployment:
            deployment = self._online_deployment(args, target)
        elif not args.entry_script:
            raise DebugInputError("give the scoring script: --entry-script score.py, or an SDK "
                                  "v2 deployment: %aml_debug_deploy VARIABLE")
        else:
            deployment = make_deployment(
                entry_script=args.entry_script, source_dir=args.source_dir,
                model_dir=args.model_dir, scoring_port=args.scoring_port,
                wait_in_init=args.wait_in_init, sample_request=args.sample_request,
                image=args.image, target=target, models=args.model, base=Path.cwd(),
            )
        script = deployment.entry_script
        spec = StepSpec(script.stem, deployment.source_dir,
                        script.relative_to(deployment.source_dir).as_posix())
        args.connect, args.ranks, args.write_launch_json, args.experiment = None, "0", False, None
        args.target = target
        self._open("deploy", f"%aml_debug_deploy {args.deployment or script.name}", [spec], args,
                   deployment=deployment, models=args.model)

    # -- %aml_debug_cache ------------------------------------------------------------------

    @magic_arguments()
    @argument("action", nargs="?", choices=("list", "clear"), default="list", help="list (the "
              "default): the job environments the local target keeps, their size and "
              "packages; clear: remove them all")
    @line_magic
    @one_line_errors
    def aml_debug_cache(self, line: str) -> None:
        """The job environments the local target built, kept up to AmlDebugMagics.cache_limit.

        Example: %aml_debug_cache clear
        """
        from aml_debug_magics.targets import job_env

        args = self._parse(self.aml_debug_cache, line)
        if args.action == "clear":
            print(f"removed the job environments: {job_env.clear() / 1e6:.1f} MB freed")
            return
        print(job_env.cache_listing(self.cache_limit))

    # -- %aml_debug_step -------------------------------------------------------------------

    @line_magic
    @one_line_errors
    def aml_debug_step(self, line: str) -> None:
        """Drive the debugger opened in this notebook (Debug here, --debug-here) as text.

        %aml_debug_step [continue|next|step|out|pause|stop|where|vars [NAME [FROM]]|eval EXPR|
        break FILE:LINE]

        continue, next (step over), step (into) and out wait for the next stop and show it;
        where (the default) shows the current line and the call stack; vars lists the current
        frame's locals, or the children of NAME (a long value in parts of 10,000 characters,
        from FROM); eval evaluates in the current frame; break sets a breakpoint, or clears the
        one there, and says the line the debugger bound it to; stop detaches and lets the
        script run on. While no debugger is attached, where and vars read the last failure's
        snapshot (from the row's log, Show frames or %aml_debug_postmortem; vars N: the
        locals of frame N of the call stack, 0 the innermost).

        Example: %aml_debug_step break train.py:42
        """
        from aml_debug_magics.debugger.commands import run_command

        print(run_command(line))

    # -- %aml_debug_postmortem ---------------------------------------------------------------

    @magic_arguments()
    @argument("run_id", help="the failed run: an SDK v1 run id (a step's, a script's or a "
              "pipeline's, whose steps are read) or an SDK v2 job name")
    @argument("--workspace", metavar="VARIABLE", help="a variable holding the Workspace (v1 "
              "run ids) or the MLClient (v2 job names); default: Workspace.from_config()")
    @line_magic
    @one_line_errors
    def aml_debug_postmortem(self, line: str) -> None:
        """Show where a finished run's debugged script failed: the snapshot its log holds.

        A script debugged by these magics that fails writes its frames (file, line, function,
        the source around it) and their locals, redacted, into its log. This reads them back
        and shows them as the row's Show frames does, read-only, with the traceback as text;
        %aml_debug_step where and vars read them too. A run without one says why in one line.

        Example: %aml_debug_postmortem train_1712345678_abcd1234 --workspace ws
        """
        from aml_debug_magics.debugger.commands import where_text
        from aml_debug_magics.debugger.snapshot import SnapshotDebugger, remember_snapshot
        from aml_debug_magics.targets.postmortem import postmortem_workspace, read_snapshots
        from aml_debug_magics.ui import widgets_render_here

        args = self._parse(self.aml_debug_postmortem, line)
        seam = postmortem_workspace(self.shell.user_ns, args.workspace)
        found = read_snapshots(seam, args.run_id)
        widgets = self.view == "widgets" or (self.view == "auto" and widgets_render_here())
        for number, each in enumerate(found):
            snapshot = SnapshotDebugger(each.snapshot, title=each.label)
            if number == 0:
                remember_snapshot(snapshot)
            truncated = each.snapshot.get("truncated")
            print(where_text(snapshot.state(), snapshot.title)
                  + (f"\n(the snapshot was cut: {truncated})" if truncated else ""))
            if widgets:
                from IPython.display import display

                from aml_debug_magics.ui.debugger_view import snapshot_view

                display(snapshot_view(snapshot))

    def _batch_deployment(self, args: argparse.Namespace, target: str) -> None:
        """``%aml_debug_deploy BATCH_DEPLOYMENT --input PATH``: its scoring script run here as
        Azure ML's batch runner runs it, on the local target only."""
        from aml_debug_magics.sources.batch import read_batch_deployment
        from aml_debug_magics.sources.parallel import check_mini_batches

        if target != "local":
            raise DebugInputError(f"{args.deployment} is a batch deployment: it runs on the "
                                  "local target only (drop --target)")
        spec = read_batch_deployment(self._variable(args.deployment), args.deployment,
                                     args.input, base=Path.cwd())
        mini_batches = check_mini_batches([spec], args.mini_batches, target)
        args.input, args.target = [], target  # read into the spec: not a pipeline's NAME=PATH
        args.connect, args.ranks, args.write_launch_json, args.experiment = None, "0", False, None
        self._open("deploy", f"%aml_debug_deploy {args.deployment}", [spec], args,
                   mini_batches=mini_batches)

    def _online_deployment(self, args: argparse.Namespace, target: str) -> Any:
        """``%aml_debug_deploy VARIABLE``: an SDK v2 deployment read into what is served."""
        from aml_debug_magics.deploy.sdk_v2 import is_online_deployment, make_online_deployment

        given = [f"--{o.replace('_', '-')}" for o in ("entry_script", "source_dir", "model_dir")
                 if getattr(args, o)] + (["--model"] if args.model else [])
        if given:
            raise DebugInputError(f"{args.deployment} says where its code and model are: drop "
                                  f"{', '.join(given)}")
        value = self._variable(args.deployment)
        if not is_online_deployment(value):
            raise DebugInputError(
                f"{args.deployment} is a {type(value).__name__}, not a ManagedOnlineDeployment "
                "or KubernetesOnlineDeployment (or give --entry-script score.py)"
            )

        def ml_client() -> Any:
            from aml_debug_magics.targets.azureml_v2 import find_ml_client

            return find_ml_client(self.shell.user_ns, args.workspace)

        return make_online_deployment(
            value, args.deployment, scoring_port=args.scoring_port,
            wait_in_init=args.wait_in_init, sample_request=args.sample_request,
            image=args.image, target=target, base=Path.cwd(), ml_client=ml_client,
            progress=lambda note: print(redact(note)),
        )

    # -- shared ---------------------------------------------------------------------------

    def _parse(self, magic: Callable[..., Any], line: str) -> argparse.Namespace:
        """Shell-like splitting, so quoted JSON and paths with spaces arrive without quotes."""
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise DebugInputError(f"cannot split the line: {error} (check the quotes)") from None
        return magic.parser.parse_args(words)

    def _options_after_variable(
        self, line: str, variable: str, rest: list[str]
    ) -> argparse.Namespace:
        """``%aml_debug_run config --timeout 5``: what follows a ScriptRunConfig's name are
        options, as if typed before it."""
        words = shlex.split(line)
        where = len(words) - 1 - len(rest)
        args = self.aml_debug_run.parser.parse_args([*words[:where], *rest, variable])
        if args.command != [variable]:
            kind = type(self.shell.user_ns[variable]).__name__
            raise DebugInputError(
                f"{variable!r} is a {kind}: only options may follow its name (got "
                f"{args.command[0]!r})"
            )
        return args

    def _variable(self, name: str) -> Any:
        if name not in self.shell.user_ns:
            raise DebugInputError(f"no variable named {name!r} in this notebook: define it first")
        return self.shell.user_ns[name]

    def _target(self, args: argparse.Namespace) -> str:
        return args.target or self.target

    def _via(self, args: argparse.Namespace, kind: str) -> str:
        """``--via`` as typed, else ``AmlDebugMagics.via`` on Azure ML (no relay elsewhere)."""
        typed = getattr(args, "via", None)
        if typed is not None:
            return typed
        return self.via if self._target(args) == "azureml" and kind != "deploy" else "listen"

    def _stop(self, kind: str) -> None:
        from aml_debug_magics.session import stop_session

        if not stop_session(kind):
            print(f"no %aml_debug_{kind} session is running")

    def _open(
        self, kind: str, title: str, specs: list, args: argparse.Namespace, **extra: Any
    ) -> None:
        from aml_debug_magics.dispatch import make_target
        from aml_debug_magics.records import DebugRequest
        from aml_debug_magics.session import open_session
        from aml_debug_magics.sources.inputs import local_paths
        from aml_debug_magics.targets.workspace import find_workspace
        from aml_debug_magics.ui import make_view

        workspace, input_paths = extra.pop("workspace", None), {}
        if self._target(args) == "azureml":  # submits (or packages) through a workspace
            if getattr(args, "input", None):
                raise DebugInputError("--input is for the local target: on Azure ML the steps "
                                      "read their own data")
            workspace = workspace or find_workspace(self.shell.user_ns, args.workspace)
            if kind != "deploy":  # the nodes' copy of debugpy, fetched once, before any submit
                from aml_debug_magics.targets.environment import shipped_debugpy

                shipped_debugpy()
        else:
            input_paths = local_paths(
                specs, getattr(args, "input", []), base=Path.cwd(),
                workspace=lambda: find_workspace(self.shell.user_ns, args.workspace),
                workspace_named=bool(args.workspace),
            )
        request = DebugRequest(
            title=title,
            steps=specs,
            target=self._target(args),
            workspace=workspace,
            experiment=args.experiment or "aml-debug",
            timeout=self.timeout if args.timeout is None else args.timeout,
            port=self.port if args.port is None else args.port,
            connect=args.connect,
            ranks=args.ranks,
            just_my_code=self.just_my_code,
            launch_json=Path(os.path.expanduser(self.launch_json)),
            write_launch_json=args.write_launch_json,
            input_paths=input_paths,
            allow=getattr(args, "allow", "auto"),
            via=self._via(args, kind),
            via_default=getattr(args, "via", None) is None and self._via(args, kind) == "auto",
            debug_here=args.debug_here,
            env=getattr(args, "env", "job"),
            cache_limit=self.cache_limit,
            post_mortem=getattr(args, "post_mortem", None) or self.post_mortem or None,
            **extra,
        )
        open_session(kind, request, make_view(self.view), make_target)
