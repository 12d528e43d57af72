"""The Logic's "Train" section: start a training round or a ranking, follow and cancel its job, plot the learning
curve, list the model versions with their validation Dice and roll back to one.

Threading: ``retrain``, ``rank``, ``models``, ``rollback``, the job calls (``poll_job``, ``cancel_job``,
``wait_for_job``) and ``learning_curve`` talk to the backend (worker thread); ``model_choices`` and ``queue_note``
only format; ``update_learning_curve_plot`` touches MRML (main thread).
:class:`JobWatch` decides when the widget's poll timer stops: when the job finished, when the backend no longer
knows it, or after a few polls in a row found no backend at all (it died or the network is gone).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import vtk

from . import mrml
from .errors import BackendRequestError, BackendUnavailableError, ClientError
from .responses import Activation, CurvePoint, Job, ModelList
from .session import BackendSession

__all__ = ["JobWatch", "TrainingSection", "PLOT_TABLE", "PLOT_CHART", "PLOT_LOSS_CHART"]

logger = logging.getLogger(__name__)

PLOT_TABLE = "ActiveSeg learning curve table"
PLOT_CHART = "ActiveSeg learning curve"  # validation Dice, fixed 0-1 axis
PLOT_LOSS_CHART = "ActiveSeg training loss"  # final training loss, its own axis (a loss of ~2 flattened Dice on one axis)


class JobWatch:
    """When to stop polling a job.

    Args:
        job_id: the job.
        max_unreachable: consecutive polls without an answer after which the backend is taken for gone.
    """

    def __init__(self, job_id: str, max_unreachable: int = 3) -> None:
        self.job_id = job_id
        self.max_unreachable = int(max_unreachable)
        self.unreachable = 0
        self.stopped_because = ""

    def answered(self, job: Job) -> bool:
        """A poll answered. Returns whether to keep polling (``False`` once the job finished)."""
        self.unreachable = 0
        if job.done:
            self.stopped_because = job.status
            return False
        return True

    def failed(self, exc: BaseException) -> bool:
        """A poll failed. Returns whether to keep polling.

        Polling stops on an unknown job (404: the backend was replaced or its job table reset), on any error that
        is not about reachability, and after :attr:`max_unreachable` unreachable polls in a row.
        """
        if isinstance(exc, BackendUnavailableError):
            self.unreachable += 1
            if self.unreachable >= self.max_unreachable:
                self.stopped_because = f"backend unreachable ({exc})"
                return False
            return True
        self.stopped_because = str(exc) or type(exc).__name__
        return False


class TrainingSection:
    """Training rounds and the learning curve.

    Args:
        session: the shared backend session.
    """

    def __init__(self, session: BackendSession) -> None:
        self.session = session

    def retrain(self, then_rank: bool = True) -> str:
        """Start a training round (then re-rank: new queue, pseudo-labels, uncertainty maps). Network; worker thread.

        Returns:
            the job id.

        Raises:
            BackendRequestError: 409 ``job_running`` when a job already runs, 422 without labelled cases.
        """
        return self.session.client.start_train(then_rank=then_rank, write_pseudo=True).job_id

    def rank(self, write_pseudo: bool = True) -> str:
        """Rank the cases with the active model: a new queue, its scores, starting predictions and uncertainty maps,
        and (``write_pseudo``) the pseudo-labels. Network; worker thread.

        Returns:
            the job id (follow it like a training job).

        Raises:
            BackendRequestError: 409 ``job_running`` when a job already runs, 409/422 before the first model.
        """
        return self.session.client.start_rank(write_pseudo=write_pseudo).job_id

    def models(self) -> ModelList:
        """Every model version with its validation Dice, the active one, and whether the queue is stale (chosen by
        another version). Network; worker thread."""
        return self.session.client.models()

    def rollback(self, version: int, rank: bool = True) -> Activation:
        """Make ``version`` the active model (roll back, or forward again). Network; worker thread.

        The backend re-ranks the cases with it when the queue was another version's (``rank``; follow
        ``Activation.rank_job`` like a training job), so the queue, its scores and the starting predictions of Next are
        the active model's. With ``rank=False`` the queue stays another version's and ``queue_stale`` says so.

        Raises:
            BackendRequestError: 404 ``model_version`` (unknown), 409 ``job_running`` (nothing changed).
        """
        activation = self.session.client.activate_model(int(version), rank=rank)
        logger.info("%s", activation.message)
        return activation

    @staticmethod
    def model_choices(models: ModelList) -> list[tuple[int, str]]:
        """(version, text) per version for a list to choose from, newest first: ``v3  round 3, Dice 0.812 (active)``;
        validation Dice is the mean over classes on the fixed validation split ("no Dice" without one)."""
        choices = []
        for model in reversed(models.models):
            parts = [f"v{model.version} "]
            round_ = model.metrics.get("round")
            if isinstance(round_, int):
                parts.append(f" round {round_},")
            parts.append(f" Dice {model.val_dice:.3f}" if model.val_dice is not None else " no Dice")
            if model.version == models.active:
                parts.append(" (active)")
            choices.append((model.version, "".join(parts)))
        return choices

    @staticmethod
    def queue_note(models: ModelList) -> str:
        """A sentence for the status line when the queue is not the active model's, else ``""``."""
        if not models.queue_stale:
            return ""
        chosen = f"v{models.queue_model}" if models.queue_model is not None else "no model"
        return (f"The queue was chosen by {chosen}, not the active v{models.active}: Rank to refresh it (order, "
                "starting predictions, pseudo-labels).")

    def poll_job(self, job_id: str) -> Job:
        """The job's status, progress, error and last log lines. Network; worker thread."""
        return self.session.client.job(job_id, log_lines=5)

    def cancel_job(self, job_id: str) -> Job:
        """Ask the backend to stop a job (its process tree). Network. Poll until ``cancelled``."""
        return self.session.client.cancel_job(job_id)

    def wait_for_job(self, job_id: str, timeout_s: float = 600.0, interval_s: float = 0.5,
                     progress: Callable[[Job], bool | None] | None = None) -> Job:
        """Poll a job until it finishes (blocking; for scripts, tests and ``runTest``).

        Args:
            job_id: the job.
            timeout_s: give up (and cancel the job) after this many seconds.
            interval_s: seconds between polls.
            progress: called with every polled status; returning ``False`` cancels the job.

        Raises:
            ClientError: the job did not finish within ``timeout_s`` (it is cancelled), or polling gave up
                (see :class:`JobWatch`).
        """
        deadline = time.monotonic() + timeout_s
        watch = JobWatch(job_id)
        while True:
            try:
                job = self.poll_job(job_id)
            except (BackendRequestError, BackendUnavailableError) as exc:
                if not watch.failed(exc):
                    raise ClientError(f"stopped following job {job_id}: {watch.stopped_because}") from exc
                time.sleep(interval_s)
                continue
            if not watch.answered(job):
                return job
            if progress is not None and progress(job) is False:
                self.cancel_job(job_id)
                deadline = min(deadline, time.monotonic() + 60.0)
            if time.monotonic() > deadline:
                self.cancel_job(job_id)
                raise ClientError(f"job {job_id} did not finish within {timeout_s:g} s; cancelled it")
            time.sleep(interval_s)

    def learning_curve(self) -> list[CurvePoint]:
        """Validation Dice and final loss per model version, oldest first. Network; worker thread."""
        return self.session.client.learning_curve()

    def update_learning_curve_plot(self, points: list[CurvePoint]) -> Any:
        """Show the learning curve as Slicer plots: a table node and two charts, Dice and loss on separate axes.

        The Dice chart (:data:`PLOT_CHART`) has a fixed 0-1 axis; the loss (:data:`PLOT_LOSS_CHART`, unitless,
        around 1-2 early on) has its own automatic axis; the plot view's chart selector switches between them.
        The nodes are created once and reused (found by name), so repeated updates do not pile up. MRML; main thread.

        Args:
            points: from :meth:`learning_curve`. Missing values are plotted as gaps (NaN).

        Returns:
            the Dice ``vtkMRMLPlotChartNode`` (show it with the Plots module's ``ShowChartInLayout``).
        """
        table = self._named_node("vtkMRMLTableNode", PLOT_TABLE)
        columns = {
            "version": [float(p.version) for p in points],
            "validation Dice": [math.nan if p.val_dice is None else float(p.val_dice) for p in points],
            "final loss": [math.nan if p.final_loss is None else float(p.final_loss) for p in points],
            "expert labels": [math.nan if p.n_expert is None else float(p.n_expert) for p in points],
        }
        vtk_table = vtk.vtkTable()
        for name, values in columns.items():
            array = vtk.vtkDoubleArray()
            array.SetName(name)
            for value in values:
                array.InsertNextValue(value)
            vtk_table.AddColumn(array)
        table.SetAndObserveTable(vtk_table)
        table.Modified()
        charts = []
        for chart_name, y_column, y_title, color in (
                (PLOT_CHART, "validation Dice", "validation Dice (mean over classes)", (0.2, 0.6, 0.2)),
                (PLOT_LOSS_CHART, "final loss", "final training loss", (0.8, 0.3, 0.2))):
            chart = self._named_node("vtkMRMLPlotChartNode", chart_name)
            chart.SetTitle(chart_name)
            chart.SetXAxisTitle("model version")
            chart.SetYAxisTitle(y_title)
            if chart_name == PLOT_CHART:
                chart.SetYAxisRangeAuto(False)
                chart.SetYAxisRange(0.0, 1.0)
            series = self._named_node("vtkMRMLPlotSeriesNode", f"ActiveSeg {y_column}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("version")
            series.SetYColumnName(y_column)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleCircle)
            series.SetColor(*color)
            if not chart.HasPlotSeriesNodeID(series.GetID()):
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
            charts.append(chart)
        logger.debug("learning curve plots updated with %d points", len(points))
        return charts[0]

    def _named_node(self, class_name: str, name: str) -> Any:
        scene = self.session.context.scene
        for index in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(index, class_name)
            if node.GetName() == name and node.GetAttribute(mrml.ROLE_ATTRIBUTE) == "plot":
                return node
        node = scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(mrml.ROLE_ATTRIBUTE, "plot")
        return node
