"""The stage envelope: what every training stage does the same way around its own data and objective.

A stage is a config dataclass, a data reader and an objective (training.objectives). `Stage.run`
does the rest, in this order (docs/safety.md explains the order):

  1. refuse an --out that would destroy data or cannot be written (before anything large is read);
  2. load the tokenizer and read the data (a bad row is reported before a model loads); measure the training
     data's n-gram overlap with the probe sets (governance.contamination: a warning above the threshold);
  3. decide between a fresh start and a resume (only as the same run: training.resume);
  4. load the model(s), build the objective, train (training.trainer; an RL stage's `train` runs its loop);
  5. check a recipe's gates on the stage's metrics, save the artifact atomically with provenance (gate outcomes
     included), its lineage ledger and model card (governance), remove the checkpoints, append the stage's
     entries to the run's ledger, print a summary.

The registry (stages.registry) lists the stages; it drives the CLI commands, the recipe runner
and docs/options.md, so a new stage is one file plus one line there.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from posttrain.artifacts import parent_record, save_artifact
from posttrain.console import summary
from posttrain.governance.card import write_model_card
from posttrain.governance.contamination import stage_check
from posttrain.governance.gates import evaluate_metrics
from posttrain.governance.record import check_lineage, record_run, write_lineage
from posttrain.models import check_model_dir, load_tokenizer, resolve_device
from posttrain.outputs import model_bytes
from posttrain.stages.common import checkpoint_dir, finalize_model, prepare_model
from posttrain.stages.guard import check_stage_output, resume_trainer, stage_inputs, start_run
from posttrain.training.trainer import Trainer, TrainResult


@dataclass
class StageData:
    """What a stage's reader returns: items for its objective, and what to record about them."""

    train: list
    eval: list
    records: list[dict]  # provenance of every file read: the training file first (role "train"), then eval/replay
    stats: dict = field(default_factory=dict)  # counts: go into metrics["data"]
    metrics: dict = field(default_factory=dict)  # other facts for the artifact's metrics (e.g. the chat template)
    summary: dict = field(default_factory=dict)  # rows for the summary table


class Stage:
    """Subclasses set the class attributes and define read_data and objective; the hooks have defaults."""

    name: str
    order: int = 50
    policy: bool = True  # writes a policy (a causal LM) that later recipe stages continue from; False for reward models
    gate_metrics: tuple[str, ...] = ("train_loss", "eval_loss", "contamination_max_share")  # a recipe may gate these
    help: str
    description: str
    data_help: str
    config: type

    # ------------------------------------------------------------ what each stage defines

    def read_data(self, tok, data_path, cfg) -> StageData:
        raise NotImplementedError

    def objective(self, model, tok, data: StageData, cfg, device, dtype, progress: bool = True):
        raise NotImplementedError

    # ------------------------------------------------------------ hooks

    def output_bytes(self, model_path, cfg) -> int | None:
        """Room the artifact needs on disk (checked before anything is loaded)."""
        return model_bytes(model_path)

    def tokenizer(self, model_path, cfg):
        check_model_dir(model_path)  # config.json and whole weights, before the tokenizer loads
        return load_tokenizer(model_path, cfg.model.trust_remote_code)

    def parent(self, model_path) -> dict | None:
        return parent_record(model_path)

    def model_id(self, model_path, parent: dict | None) -> str:
        """What identifies the starting model in the resume check."""
        return parent["weights_sha256"]

    def load(self, model_path, cfg, tok):
        """(model, device, dtype): the model to train, on its device, with LoRA when configured."""
        model, _, device, dtype = prepare_model(model_path, cfg.model, tok)
        return model, device, dtype

    def seeds(self, cfg, parent: dict | None) -> dict:
        return {"train": cfg.train.seed} if parent else {"init": cfg.train.seed, "train": cfg.train.seed}

    def finish(self, model, tok, cfg):
        """The model to save (LoRA merged or not, cast to save_dtype)."""
        return finalize_model(model, cfg.model)

    def train(self, model, tok, data: StageData, cfg, device, dtype, *, out, ckpt, run_record, progress: bool
              ) -> tuple[TrainResult, object]:
        """(result, objective): train on the data with the shared trainer; RL stages run their own loop here."""
        objective = self.objective(model, tok, data, cfg, device, dtype, progress=progress)
        trainer = Trainer(model, data.train, cfg.train, objective, device=device, dtype=dtype, eval_items=data.eval,
                          ckpt_dir=checkpoint_dir(out), desc=self.name, progress=progress, run_record=run_record)
        resume_trainer(trainer, ckpt)
        return trainer.fit(), objective

    def data_paths(self, data_path, cfg) -> list:
        """Every data file the stage reads (the ledger records where each came from: a world, a sampling run)."""
        data = getattr(cfg, "data", None)
        return [data_path, *(getattr(data, k, None) for k in ("eval_data", "replay_data"))]

    def result_metrics(self, model, result: TrainResult, data: StageData, objective, device, dtype) -> dict:
        """Stage-specific metrics of the finished run (e.g. held-out accuracy); also shown in the summary."""
        return dict(result.extra)

    # ------------------------------------------------------------ the envelope

    def run(self, model_path, data_path, out, cfg, *, resume: bool | str = False, progress: bool = True,
            overwrite: bool = False, allow_change=(), reads: dict | None = None, ledger=None,
            recipe: dict | None = None, gates: list | None = None) -> dict:
        """Train and write the artifact to `out`; return its provenance.

        resume: True, False or "auto" (training.resume.plan_resume); reads: other inputs to protect,
        e.g. {"--config": path}; see docs/safety.md. ledger: the run's ledger (a recipe's RUN_DIR/ledger.jsonl),
        which gets this stage's entries too; recipe: {"recipe": name, "name": stage name} for the ledger;
        gates: a recipe's gates on this stage's metrics (governance.gates), recorded in provenance and the ledger.
        """
        t0 = time.perf_counter()
        resolve_device(cfg.model.device, "model.device")  # cuda on a machine without one: say so before any work
        check_stage_output(out, stage_inputs(model_path, data_path, cfg, reads), overwrite=overwrite,
                           need_bytes=self.output_bytes(model_path, cfg))
        check_lineage(model_path)  # a starting model whose audit trail was altered is refused before any work
        tok = self.tokenizer(model_path, cfg)
        data = self.read_data(tok, data_path, cfg)
        contamination = stage_check([data_path, getattr(getattr(cfg, "data", None), "replay_data", None)],
                                    cfg.train.contamination_n, cfg.train.contamination_threshold)
        parent = self.parent(model_path)
        ckpt, run_record = start_run(out, cfg, model_id=self.model_id(model_path, parent), data_records=data.records,
                                     resume=resume, allow_change=allow_change, overwrite=overwrite)
        # What the stage creates at random (LoRA's A matrices, a new score or value head) comes from the run's
        # seed, so the same seed, data and settings give the same run; a resumed run loads them from its checkpoint.
        torch.manual_seed(cfg.train.seed)
        model, device, dtype = self.load(model_path, cfg, tok)
        result, objective = self.train(model, tok, data, cfg, device, dtype, out=out, ckpt=ckpt, run_record=run_record,
                                       progress=progress)
        extra = self.result_metrics(model, result, data, objective, device, dtype)
        metrics = {
            "train_loss": result.train_loss, "eval_loss": result.eval_loss, "steps": result.steps,
            "tokens": result.tokens, "tokens_per_s": round(result.tokens_per_s, 1),
            "peak_memory_mb": round(result.peak_memory_mb, 1), "data": data.stats, "dtype": dtype,
            "device": str(device), **{f"eval_{k}": v for k, v in result.eval_metrics.items()}, **data.metrics, **extra,
        }
        if contamination is not None:
            metrics |= {"contamination": contamination, "contamination_max_share": contamination["max_share"]}
        gate_results = evaluate_metrics(gates, metrics) if gates else None
        entries: list[dict] = []

        def govern(tmp, prov):  # inside the atomic save: the artifact appears with its ledger and card
            entries.extend(write_lineage(tmp, prov, model_path=model_path, data_paths=self.data_paths(data_path, cfg),
                                         run_ledger=ledger, **(recipe or {})))
            write_model_card(tmp)

        prov = save_artifact(
            out, stage=self.name, model=self.finish(model, tok, cfg), tokenizer=tok, config=asdict(cfg),
            parent=parent, data=data.records, seeds=self.seeds(cfg, parent), metrics=metrics,
            metrics_lines=result.metrics_lines, wall_time_s=time.perf_counter() - t0, resumes=run_record["history"],
            finalize=govern, extra={"gates": gate_results} if gate_results is not None else None,
        )
        record_run(ledger, entries)
        if getattr(cfg.train, "report_to", "none") == "tensorboard":  # the artifact's tensorboard/ = its metrics.jsonl
            from posttrain.training.tensorboard import write_artifact_events
            write_artifact_events(out, result.metrics_lines)
        shutil.rmtree(checkpoint_dir(Path(out)), ignore_errors=True)
        print(summary(f"{self.name} finished: {out} ({prov['artifact_id']})", {
            "steps": result.steps, "train loss": result.train_loss, "eval loss": result.eval_loss, **data.summary,
            **{k.replace("_", " "): v for k, v in extra.items() if not isinstance(v, (dict, list))},
            **{f"{k.replace('_', ' ')} {sub}": x for k, v in extra.items() if isinstance(v, dict) for sub, x in v.items()
               if not isinstance(x, (dict, list))},
            "tokens/s": round(result.tokens_per_s, 1), "dtype": dtype, "wall time (s)": round(time.perf_counter() - t0, 1),
        }))
        return prov
