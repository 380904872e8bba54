"""Per-domain adapters on one frozen base (LoRA, Hu et al. 2021; any PEFT adapter kind).

Train one adapter per domain (`adapter.name=jakarta`, then `adapter.name=bali`), then:

- `AdapterBank`: the base loaded once, every run's adapter on it under its name, switched
  with `use(name)` without reloading the base; `evaluate` scores one adapter on one test split;
- `compare(run_dirs)`: the domain x adapter matrix (`lokal adapters RUN_DIR...`);
- `export_run(run_dir, out_dir)`: the adapter merged into the base as a standalone model that
  plain transformers / timm load (`lokal export RUN_DIR OUT_DIR`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.paths import CLASSES_FILE
from lokal.runs.export_code import needs_lokal_code, write_mean_pooling
from lokal.training.weights import ADAPTER_DIR, adapter_name, is_peft, load_buffers, load_into

log = logging.getLogger(__name__)

# The model config keys that make two runs' bases the same weights (not max_length, lora_targets, ...).
BASE_KEYS = ("_target_", "name", "checkpoint", "pretrained", "dtype")
MERGE_ATOL = 1e-5  # float32 W + BA rounds differently from W x + B A x: ~1e-7 to 1e-6 on the test models


@dataclass
class Adapter:
    """One run's adapter in a bank: where it came from and what it costs on disk."""

    name: str
    run_dir: Path
    kind: str  # PEFT type: LORA, IA3, ...
    size_bytes: int  # everything under the run's adapter/: what one more domain costs
    buffers: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # BatchNorm statistics


class AdapterBank:
    """Several runs' PEFT adapters on one frozen base, switched by name.

    `model` is a fresh base (a lokal model, no method applied); `add(run_dir)` puts a run's
    adapter on it. Switching is PEFT's `set_adapter` plus, for CNNs, the adapter's own
    BatchNorm statistics: they moved while it trained, so they belong to the adapter.
    """

    def __init__(self, model: nn.Module) -> None:
        if is_peft(model.net):
            raise LokalError("AdapterBank needs a plain base model: build it without a method")
        self.model = model.eval()
        self.adapters: dict[str, Adapter] = {}
        self.base_bytes = tensor_bytes(model.net)
        self._pristine: dict[str, torch.Tensor] = {}  # base buffers that some adapter overrides

    def add(self, run_dir: str | Path) -> str:
        """Load a run's adapter onto the base; returns its name in the bank (made unique)."""
        from peft import PeftModel

        run_dir = Path(run_dir)
        check_adapter_dir(run_dir)
        name = unique_name(adapter_name(run_dir), self.adapters)
        if self.adapters:
            self.model.net.load_adapter(run_dir / ADAPTER_DIR, adapter_name=name)
        else:
            self.model.net = PeftModel.from_pretrained(self.model.net, run_dir / ADAPTER_DIR, adapter_name=name)
        buffers = load_buffers(run_dir)
        base = self.model.net.get_base_model().state_dict()
        self._pristine |= {k: base[k].clone() for k in buffers if k not in self._pristine}
        self.adapters[name] = Adapter(name, run_dir, adapter_kind(run_dir), folder_bytes(run_dir / ADAPTER_DIR),
                                      buffers)
        self.use(name)
        return name

    def use(self, name: str) -> nn.Module:
        """Make `name` the active adapter (its head and BatchNorm statistics included)."""
        if name not in self.adapters:
            raise LokalError(f"no adapter {name!r} in this bank; loaded: {', '.join(self.adapters)}")
        self.model.net.set_adapter(name, inference_mode=True)  # inference_mode: keep it frozen
        load_into(self.model.net.get_base_model(), self._pristine | self.adapters[name].buffers)
        return self.model

    def evaluate(self, name: str, datamodule) -> dict[str, float]:
        """Test-split accuracy, macro F1 and AUROC of adapter `name`, as training reports them."""
        from lokal.tasks.classification import classification_metrics

        model = self.use(name).eval()
        device = next(model.parameters()).device
        metrics = classification_metrics(len(datamodule.class_names), "").to(device)
        datamodule.setup("test")
        with torch.no_grad():
            for batch in datamodule.test_dataloader():
                batch = {k: v.to(device) for k, v in batch.items()}
                metrics.update(model(batch).softmax(-1), batch["label"])
        return {k: round(v.item(), 6) for k, v in metrics.compute().items()}

    def matrix(self, domains: dict) -> dict[str, dict[str, dict[str, float]]]:
        """domain -> adapter -> test metrics: every adapter on every domain's test split."""
        return {domain: {name: self.evaluate(name, dm) for name in self.adapters} for domain, dm in domains.items()}


# -- building a bank from run directories ------------------------------------------------------
def from_runs(run_dirs: list[str | Path], device: str | None = None) -> tuple[AdapterBank, dict]:
    """The base of `run_dirs` loaded once with every run's adapter on it, and each run's data
    (its own test split: a domain), keyed by the adapter's name in the bank."""
    from hydra.utils import instantiate

    from lokal.runs.load import load_config
    from lokal.training.build import build

    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise LokalError("give at least one run directory trained with a PEFT method (e.g. method=lora)")
    for run_dir in run_dirs:
        check_run_dir(run_dir)
    configs = [load_config(r) for r in run_dirs]
    check_same_base(run_dirs, configs)
    first, model = build(configs[0])  # the base, once; its data is the first domain
    if getattr(first, "task", "classification") != "classification":
        raise LokalError(f"{run_dirs[0]} is a {first.task} run: `lokal adapters` scores classifiers on their "
                         "test splits (accuracy); a language model's adapters have no accuracy to compare")
    data = [first] + [instantiate(cfg.data) for cfg in configs[1:]]
    check_same_classes(run_dirs, data)
    bank = AdapterBank(model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    domains = {}
    for run_dir, datamodule in zip(run_dirs, data, strict=True):
        datamodule.use_model(model)
        domains[bank.add(run_dir)] = datamodule
    return bank, domains


def check_run_dir(run_dir: Path) -> None:
    if not (run_dir / "config.yaml").is_file():
        raise LokalError(f"{run_dir} is not a lokal run directory (no config.yaml)")
    check_adapter_dir(run_dir)


def check_adapter_dir(run_dir: Path) -> None:
    if not (run_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        raise LokalError(f"{run_dir} has no {ADAPTER_DIR}/: adapters come from PEFT methods; train the domain with "
                         "method=lora adapter.name=NAME (a run still training has none yet)")


def check_same_base(run_dirs: list[Path], configs: list) -> None:
    """Adapters fit only the base they were trained on: same model, same weights source."""
    base = {k: configs[0].model.get(k) for k in BASE_KEYS}
    for run_dir, cfg in zip(run_dirs[1:], configs[1:], strict=True):
        other = {k: cfg.model.get(k) for k in BASE_KEYS}
        if other != base:
            differ = ", ".join(f"model.{k}={other[k]} (not {base[k]})" for k in BASE_KEYS if other[k] != base[k])
            raise LokalError(f"{run_dir} was trained on another base than {run_dirs[0]}: {differ}. "
                             "Adapters share one base only when trained on the same model")
    kinds = {adapter_kind(r) for r in run_dirs}
    if len(kinds) > 1:
        raise LokalError(f"the runs hold adapters of different kinds ({', '.join(sorted(kinds))}); PEFT serves one "
                         "kind per base: compare each kind's runs separately")


def check_same_classes(run_dirs: list[Path], data: list) -> None:
    classes = data[0].class_names
    for run_dir, datamodule in zip(run_dirs[1:], data[1:], strict=True):
        if len(datamodule.class_names) != len(classes):
            raise LokalError(f"{run_dir} has {len(datamodule.class_names)} classes {datamodule.class_names}, "
                             f"{run_dirs[0]} has {len(classes)} {classes}: adapters of one bank share a head size")
        if datamodule.class_names != classes:
            log.warning("%s names its classes %s, %s %s: the matrix compares them by position",
                        run_dir, datamodule.class_names, run_dirs[0], classes)


def unique_name(name: str, taken: dict) -> str:
    """Two runs trained under one name (e.g. both "default") get name, name_2, name_3 ..."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def adapter_kind(run_dir: Path) -> str:
    return json.loads((run_dir / ADAPTER_DIR / "adapter_config.json").read_text())["peft_type"]


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def tensor_bytes(net: nn.Module) -> int:
    """Bytes of every weight and buffer, tied ones once: about the size of the model's safetensors file."""
    return sum({t.data_ptr(): t.numel() * t.element_size() for t in net.state_dict().values()}.values())


# -- the matrix report ----------------------------------------------------------------------
def compare(run_dirs: list[str | Path]) -> dict:
    """`lokal adapters`: every adapter on every run's test split, with the file sizes."""
    bank, domains = from_runs(run_dirs)
    return {
        "base": {"model": str(_model_name(bank)), "bytes": bank.base_bytes},
        "adapters": {a.name: {"run_dir": str(a.run_dir), "kind": a.kind, "bytes": a.size_bytes}
                     for a in bank.adapters.values()},
        "metrics": bank.matrix(domains),  # domain -> adapter -> {accuracy, f1_macro, auroc}
    }


def _model_name(bank: AdapterBank) -> str:
    return getattr(bank.model, "name", type(bank.model.net.get_base_model()).__name__)


def to_markdown(report: dict) -> str:
    """Rows: each run's test split (named by its adapter); columns: adapters; cells: test accuracy."""
    names = list(report["adapters"])
    lines = ["test accuracy (rows: domain = a run's test split; columns: adapter)", "",
             "| domain \\ adapter | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for domain, row in report["metrics"].items():
        cells = [f"**{row[n]['accuracy']:.3f}**" if n == domain else f"{row[n]['accuracy']:.3f}" for n in names]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    lines += ["", "| file | size |", "|---|---|", f"| base {report['base']['model']} (stored once) | "
              f"{human_bytes(report['base']['bytes'])} |"]
    lines += [f"| adapter {n} ({a['kind']}) | {human_bytes(a['bytes'])} |" for n, a in report["adapters"].items()]
    return "\n".join(lines) + "\n"


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


# -- merging and exporting ------------------------------------------------------------------
def merge(model: nn.Module, batch: dict[str, torch.Tensor], atol: float = MERGE_ATOL) -> nn.Module:
    """Fold the active adapter into the base weights (PEFT merge_and_unload), in place, and check
    on `batch` that the merged model gives the adapter model's outputs. Non-PEFT models pass through."""
    if not is_peft(model.net):
        return model
    expected = logits(model, batch)
    try:
        net = model.net.merge_and_unload()
    except (ValueError, TypeError, NotImplementedError, AttributeError) as err:
        kind = model.net.active_peft_config.peft_type
        raise LokalError(f"a {kind} adapter cannot be merged into its base ({err}); serve it on the base "
                         "with `lokal adapters` instead") from err
    if hasattr(net, "peft_config"):  # PEFT leaves its config on the unwrapped model
        del net.peft_config
    model.net = net
    check_close(expected, logits(model, batch), atol, "the merged model")
    return model


def export(model: nn.Module, out_dir: str | Path, class_names: list[str] | None, batch: dict[str, torch.Tensor],
           atol: float = MERGE_ATOL) -> Path:
    """Write a plain (merged) model as a standalone folder: HF text models as a save_pretrained
    folder, timm models as model.safetensors + config.json. The folder is loaded back with the
    plain library and checked against `model` on `batch` before it takes its final name."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise LokalError(f"{out_dir} exists and is not empty: remove it or give another OUT_DIR")
    expected = logits(model, batch)
    save, load = (save_hf, load_hf) if model.modality == "text" else (save_timm, load_timm)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(model, tmp, class_names)
        try:
            reloaded = load(tmp)
        except (RuntimeError, ValueError, OSError) as err:  # weights the plain architecture has no place for
            raise LokalError(f"the exported files do not load as a plain model ({str(err).splitlines()[0]})") from err
        check_close(expected, reloaded(batch), atol, "the exported model, loaded back,")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """`lokal export`: a run's model as a standalone folder; PEFT adapters merged into the base,
    other methods' runs written in full. Methods that change the architecture cannot export."""
    from omegaconf import OmegaConf

    from lokal.runs.load import load_run

    datamodule, model = load_run(run_dir)
    batch = sample_batch(datamodule)
    names = getattr(datamodule, "class_names", None)
    if names is not None and (Path(run_dir) / CLASSES_FILE).is_file():  # the output order the run saved
        names = json.loads((Path(run_dir) / CLASSES_FILE).read_text(encoding="utf-8"))
    try:
        return export(merge(model, batch), out_dir, names, batch)
    except LokalError as err:
        method = OmegaConf.load(Path(run_dir) / "config.yaml").method._target_.rsplit(".", 1)[-1]
        raise LokalError(f"{run_dir} (method {method}) cannot be exported as a plain model: {err}. Methods that add "
                         "layers or computation beside the base (e.g. a side network) cannot; LoRA/IA3 adapters "
                         "merge, and full/bitfit/partial runs export as they are") from err


def save_hf(model: nn.Module, folder: Path, class_names: list[str] | None) -> None:
    net = model.net
    if class_names:  # classifiers: the pipeline and config show names, not LABEL_0
        net.config.id2label = dict(enumerate(class_names))
        net.config.label2id = {name: i for i, name in enumerate(class_names)}
    from lokal.models.text import quiet_transformers

    with quiet_transformers():  # no "Writing model shards" bar
        net.save_pretrained(folder)  # safetensors
    model.tokenizer.save_pretrained(folder)
    if getattr(model, "pooling", "first") == "mean":  # transformers' own heads read the first token
        write_mean_pooling(folder)


def load_hf(folder: Path):
    import transformers

    from lokal.models.text import quiet_transformers

    auto_class = getattr(transformers, hf_auto_class(folder))
    with quiet_transformers():
        net = auto_class.from_pretrained(folder, trust_remote_code=needs_lokal_code(folder)).eval()
    return lambda batch: net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def hf_auto_class(folder: Path) -> str:
    """The Auto class for an exported transformers folder: causal LM for instruction runs."""
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    return "AutoModelForCausalLM" if architecture.endswith("ForCausalLM") else "AutoModelForSequenceClassification"


def how_to_load(folder: Path) -> str:
    """One line telling the user how to load an exported folder without lokal."""
    if (folder / "tokenizer_config.json").is_file():
        trust = ", trust_remote_code=True" if needs_lokal_code(folder) else ""
        return (f"transformers.{hf_auto_class(folder)}.from_pretrained('{folder}'{trust}) and "
                f"AutoTokenizer.from_pretrained('{folder}'{trust})")
    return f"timm.create_model('local-dir:{folder}', pretrained=True)"


def save_timm(model: nn.Module, folder: Path, class_names: list[str] | None) -> None:
    """timm's own hub layout, so `timm.create_model("local-dir:FOLDER")` rebuilds it."""
    from timm.models import save_for_hf

    save_for_hf(model.net, folder, model_config={"label_names": list(class_names or [])}, safe_serialization=True,
                data_config=model.data_config)


def load_timm(folder: Path):
    """The way a user loads it by hand: architecture name + this file, no lokal."""
    import timm

    config = json.loads((folder / "config.json").read_text())
    architecture, num_classes = config["architecture"], config["num_classes"]
    net = timm.create_model(architecture, num_classes=num_classes, pretrained=True,
                            pretrained_cfg_overlay={"file": str(folder / "model.safetensors"),
                                                    "num_classes": num_classes}).eval()
    return lambda batch: net(batch["image"])


def sample_batch(datamodule, rows: int = 16) -> dict[str, torch.Tensor]:
    """A few real examples (test split first) to check merged and exported outputs on."""
    datamodule.setup()
    for loader in (datamodule.test_dataloader, datamodule.val_dataloader, datamodule.train_dataloader):
        batch = next(iter(loader()), None)
        if batch is not None:
            return {k: v[:rows] for k, v in batch.items()}
    raise LokalError("the run's data has no examples to check the exported model on")


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(batch)
    return getattr(out, "logits", out)  # causal LMs return HF's output object


def check_close(expected: torch.Tensor, actual: torch.Tensor, atol: float, what: str) -> None:
    """Rounding differences scale with the logits and with the precision (bf16 models merge coarser)."""
    tol = max(atol, 100 * torch.finfo(expected.dtype).eps) * max(1.0, expected.abs().max().item())
    diff = (expected.float() - actual.float()).abs().max().item()
    if diff > tol:
        raise LokalError(f"{what} differs from the trained model (max |logit difference| {diff:.2e} > {tol:.1e})")
