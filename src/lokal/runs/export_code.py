"""The code file `lokal export` writes beside a mean-pooled text classifier (model.pooling=mean),
so that plain transformers loads it with `trust_remote_code=True`; and the check that a folder's
code is exactly that file before lokal itself runs it (`lokal predict`, the export check)."""

from __future__ import annotations

import json
from pathlib import Path

import lokal.models
from lokal.errors import LokalError

CODE_FILE = "modeling_mean_pooling.py"
CLASS, CONFIG_CLASS, MODEL_TYPE = "MeanPooledForSequenceClassification", "MeanPooledConfig", "lokal_mean_pooled"
_TEMPLATE = Path(lokal.models.__file__).with_name(CODE_FILE)  # lokal trains with the same file
_IMPORTS = ("from transformers import BertConfig as BaseConfig",
            "from transformers import BertForSequenceClassification as Base")


def code_for(architecture: str) -> str:
    """modeling_mean_pooling.py with its base classes set to the run's own (e.g.
    XLMRobertaForSequenceClassification and its XLMRobertaConfig)."""
    import transformers

    if not architecture.endswith("ForSequenceClassification") or not hasattr(transformers, architecture):
        raise LokalError(f"mean pooling exports transformers sequence classifiers; {architecture} is not one")
    config_class = getattr(transformers, architecture).config_class.__name__
    code = _TEMPLATE.read_text(encoding="utf-8")
    for line, name in zip(_IMPORTS, (f"{config_class} as BaseConfig", f"{architecture} as Base"), strict=True):
        code = code.replace(line, f"from transformers import {name}", 1)
    return code


def write_mean_pooling(folder: Path) -> None:
    """Turn a save_pretrained folder of a plain classifier into one whose head reads the mean."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base = config["architectures"][0]
    (folder / CODE_FILE).write_text(code_for(base), encoding="utf-8")
    module = CODE_FILE.removesuffix(".py")
    config |= {"architectures": [CLASS], "model_type": MODEL_TYPE, "lokal_pooling": "mean",
               "lokal_base_architecture": base,
               "auto_map": {"AutoConfig": f"{module}.{CONFIG_CLASS}",
                            "AutoModelForSequenceClassification": f"{module}.{CLASS}"}}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def needs_lokal_code(folder: Path) -> bool:
    """True when the folder's model runs lokal's mean-pooling code, checked to be exactly that file;
    False for plain folders. Code lokal did not write is never run on the user's behalf."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "auto_map" not in config:
        return False
    code = folder / CODE_FILE
    expected = code_for(config.get("lokal_base_architecture", "?")) if config.get("lokal_pooling") == "mean" else None
    if expected is None or not code.is_file() or code.read_text(encoding="utf-8") != expected:
        raise LokalError(f"{folder} holds model code that `lokal export` did not write (config.json auto_map); lokal "
                         "does not run it. If you trust it, load it with transformers' trust_remote_code=True")
    return True
