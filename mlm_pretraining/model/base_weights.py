"""Keep in the saved model the base checkpoint's encoder weights that masked-LM training neither uses nor saves.

``BertForMaskedLM`` has no pooler, so a model saved after masked-LM training lacks the pooler the base checkpoint
had, and a sequence classifier fine-tuned from it starts from a random pooler while one fine-tuned from the base
starts from the pretrained one. Masked-LM training never touches those weights, so the base's values are exactly
what they would be in a full pretraining checkpoint (as bert-base-uncased's holds pooler and MLM head together).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

logger = logging.getLogger(__name__)

EXTRA_SHARD = "model-base-weights.safetensors"  # for sharded outputs: the kept weights as one more shard


def _locate(base: str, filename: str, cache_dir: str | None, revision: str | None) -> str | None:
    """``filename`` of the model folder or hub repository ``base`` (downloaded if need be), or None."""
    if Path(base).is_dir():
        path = Path(base) / filename
        return str(path) if path.is_file() else None
    try:
        return hf_hub_download(base, filename, cache_dir=cache_dir, revision=revision)
    except (OSError, EntryNotFoundError):  # not in the repository, or offline and not cached
        return None


def _weight_files(base: str, cache_dir: str | None, revision: str | None) -> list[str]:
    """The base checkpoint's safetensors files (one, or the shards of its index); [] when there are none."""
    single = _locate(base, SAFE_WEIGHTS_NAME, cache_dir, revision)
    if single:
        return [single]
    index = _locate(base, SAFE_WEIGHTS_INDEX_NAME, cache_dir, revision)
    if not index:
        return []
    shards = sorted(set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values()))
    return [path for shard in shards if (path := _locate(base, shard, cache_dir, revision))]


def base_weights_to_keep(base: str, unexpected_keys, prefix: str, cache_dir: str | None = None,
                         revision: str | None = None) -> dict:
    """The tensors of ``base`` among ``unexpected_keys`` (loading info) that belong to the encoder, named as the
    masked-LM model saves them (``prefix``, e.g. 'bert.', + encoder name): the pooler of a bare BertModel checkpoint
    ('pooler.dense.weight' -> 'bert.pooler.dense.weight'). Other heads (BertForPreTraining's NSP) are left out."""
    unexpected = set(unexpected_keys)
    kept = {}
    for path in _weight_files(base, cache_dir, revision) if unexpected else []:
        with safe_open(path, framework="pt") as handle:
            keys = list(handle.keys())
            # A bare encoder checkpoint (sentence-transformers, BertModel) names its weights without the prefix.
            bare = not any(key.startswith(prefix) for key in keys)
            for key in keys:
                if key in unexpected and (bare or key.startswith(prefix)):
                    kept[key if key.startswith(prefix) else prefix + key] = handle.get_tensor(key)
    return kept


def keep_base_weights(model, base: str, unexpected_keys, output_dir: str, cache_dir: str | None = None,
                      revision: str | None = None) -> list[str]:
    """Add to the model saved in ``output_dir`` the encoder weights of ``base`` that ``model`` lacks (its loading
    info's ``unexpected_keys``); return their names. Keys the saved model already holds are never replaced."""
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    kept = base_weights_to_keep(base, unexpected_keys, prefix, cache_dir, revision)
    folder = Path(output_dir)
    single, index = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    if not kept:
        return []
    if single.is_file():
        weights = load_file(str(single))
        kept = {key: tensor for key, tensor in kept.items() if key not in weights}
        if kept:
            save_file({**weights, **kept}, str(single), metadata={"format": "pt"})
    elif index.is_file():
        manifest = json.loads(index.read_text(encoding="utf-8"))
        kept = {key: tensor for key, tensor in kept.items() if key not in manifest["weight_map"]}
        if kept:
            save_file(kept, str(folder / EXTRA_SHARD), metadata={"format": "pt"})
            manifest["weight_map"].update({key: EXTRA_SHARD for key in kept})
            index.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    else:
        logger.warning("No %s or %s in %s: the base model's %s not added.", SAFE_WEIGHTS_NAME,
                       SAFE_WEIGHTS_INDEX_NAME, output_dir, ", ".join(sorted(kept)))
        return []
    if kept:
        logger.info("Kept the base model's %s in the saved model (masked-LM training does not use them; a "
                    "classifier fine-tuned from this folder starts from them, as from the base).",
                    ", ".join(sorted(kept)))
    return sorted(kept)
