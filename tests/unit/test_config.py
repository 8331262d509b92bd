"""Presets and typed run settings (metalab.config)."""

import dataclasses

import pytest

from metalab import BenchmarkConfig, TrainConfig
from metalab.algorithms import make_config
from metalab.config import check_run, coerce, field_docs, load_preset, preset_names
from metalab.utils.errors import MetalabError


def test_every_preset_loads_and_builds_its_configs():
    names = preset_names()
    assert {"maml-omniglot-5w1s", "protonet-omniglot-20w5s", "maml-sinusoid", "mann-omniglot-5class"} <= set(names)
    for name in names:
        preset = load_preset(name)
        assert preset["description"] and preset["algorithm"]
        BenchmarkConfig(**preset["benchmark"])
        TrainConfig(**preset["train"])
        make_config(preset["algorithm"], **preset.get("hparams", {}))


def test_a_preset_holds_the_paper_setting():
    maml = load_preset("maml-omniglot-5w1s")
    assert maml["algorithm"] == "maml"
    assert maml["benchmark"] == {"name": "omniglot", "n_way": 5, "k_shot": 1, "train_n_query": 15}
    assert maml["train"]["meta_batch_size"] == 32 and maml["train"]["steps"] == 60000
    assert maml["hparams"] == {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3,
                               "downsample": "stride", "readout": "mean"}  # the MAML code's Omniglot model


def test_unknown_and_ill_typed_fields_are_clear_errors():
    with pytest.raises(MetalabError, match="unknown preset 'maml-omniglot'"):
        load_preset("maml-omniglot")
    with pytest.raises(MetalabError, match="TrainConfig has no field 'step'"):
        check_run({"algorithm": "maml", "train": {"step": 10}}, "test")
    with pytest.raises(MetalabError, match=r"TrainConfig.steps must be an integer, got '10'"):
        check_run({"train": {"steps": "10"}}, "test")
    with pytest.raises(MetalabError, match=r"TrainConfig.outer_lr must be a number, got nan"):
        coerce(TrainConfig, "outer_lr", float("nan"), "test")
    with pytest.raises(MetalabError, match="unknown key"):
        check_run({"algorithm": "maml", "trian": {}}, "test")
    assert coerce(TrainConfig, "outer_lr", 1, "test") == 1.0 and isinstance(coerce(TrainConfig, "outer_lr", 1, "t"), float)
    assert coerce(TrainConfig, "grad_clip", None, "test") is None
    with pytest.raises(MetalabError, match="must be true or false"):
        coerce(TrainConfig, "lr_anneal", 1, "test")


@pytest.mark.parametrize("cls", [BenchmarkConfig, TrainConfig])
def test_every_field_is_documented_for_the_cli_help(cls):
    docs = field_docs(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    assert all(len(text) > 10 for text in docs.values())


def test_command_line_values_parse_as_literals_and_commas_inside_brackets_stay():
    from metalab.config import parse_assignments, parse_value

    assert parse_value("0.4") == 0.4 and parse_value(" True") is True and parse_value("false") is False
    assert parse_value("'batched'") == "batched" == parse_value("batched") and parse_value("None") is None
    assert parse_assignments("inner_lr=0.4,lr_init_range=(0.005, 0.1),channels_last=true,opt=sgd,") == {
        "inner_lr": 0.4, "lr_init_range": (0.005, 0.1), "channels_last": True, "opt": "sgd"}
    assert parse_assignments("") == {}
    with pytest.raises(MetalabError, match="expected KEY=VALUE, got 'inner_lr'"):
        parse_assignments("inner_lr,steps=1")


def test_hyper_parameters_of_the_wrong_simple_type_are_named():
    from metalab.algorithms import make_config

    assert make_config("maml", inner_lr=1, first_order=True).inner_lr == 1
    for field, value, wanted in (("first_order", "true", "true or false"), ("inner_steps", 1.5, "an integer"),
                                 ("inner_steps", True, "an integer"), ("task_mode", 3, "a string")):
        with pytest.raises(MetalabError, match=f"maml: hyper-parameter {field} must be {wanted}"):
            make_config("maml", **{field: value})
    with pytest.raises(MetalabError, match="inner_lr must be a finite number"):  # a compound type checks itself
        make_config("maml", inner_lr="fast")
