"""Group kinds (head / hidden / mlp / channels) in inspect and the report, and per-kind ratios: ``--ratio``
applies to every kind unless ``--head-ratio``, ``--mlp-ratio``, ``--hidden-ratio`` or ``--channel-ratio`` says
otherwise, also under a MAC budget. On a hand-built encoder (builders.tiny_transformer) and a CNN."""
from __future__ import annotations

import json

import pytest
from builders import conv_bn_relu_chain, tiny_transformer
from conftest import assert_mask_equivalent

import onnxprune
from onnxprune.cli.app import main
from onnxprune.errors import UsageError


def _rows(result) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for row in result.report["groups"]:
        by_kind.setdefault(row["kind"], []).append(row)
    return by_kind


def test_an_encoder_has_heads_hidden_width_and_mlp_groups():
    model = tiny_transformer(layers=2)
    kinds = [(g.kind, g.size, g.blocked) for g in onnxprune.analyze(model).groups]
    assert kinds == [("hidden", 8, None), ("head", 2, None), ("mlp", 16, None), ("head", 2, None),
                     ("mlp", 16, None), ("mlp", 3, "reaches graph output 'y'")]


def test_ratio_cuts_every_kind_and_stays_mask_equivalent():
    model = tiny_transformer(layers=2)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5))
    rows = _rows(result)
    assert [r["kept"] for r in rows["hidden"]] == [4]
    assert [r["kept"] for r in rows["head"]] == [1, 1]
    assert [r["kept"] for r in rows["mlp"]] == [8, 8, 3]
    for r in rows["head"]:  # the Q, K, V and output projections, and the biases added to Q, K and V
        assert [n.split("_")[0] for n in r["touches"]].count("matmul") == 4, r["touches"]
    assert result.verification is not None and result.verification.mask_equivalent
    assert_mask_equivalent(model, result.model, result.plan)
    assert result.report["macs_kept"] < 0.3


@pytest.mark.parametrize("kinds,want", [({"hidden": 0.0}, {"hidden": [8], "head": [1, 1], "mlp": [8, 8, 3]}),
                                        ({"head": 0.0, "mlp": 0.25}, {"hidden": [4], "head": [2, 2],
                                                                      "mlp": [12, 12, 3]})])
def test_a_kind_ratio_overrides_ratio_for_its_kind(kinds, want):
    model = tiny_transformer(layers=2)
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5, kind_ratios=kinds))
    assert {k: [r["kept"] for r in rows] for k, rows in _rows(result).items()} == want
    assert_mask_equivalent(model, result.model, result.plan)


def test_a_budget_leaves_a_kind_with_its_own_ratio_alone():
    model = tiny_transformer(layers=2)
    result = onnxprune.prune(model, onnxprune.PruneConfig(target_macs=0.6, kind_ratios={"hidden": 0.0}))
    rows = _rows(result)
    assert [r["kept"] for r in rows["hidden"]] == [8]
    assert result.report["macs_kept"] <= 0.6
    assert any(r["kept"] < r["size"] for r in rows["head"] + rows["mlp"][:2])


def test_cnn_groups_are_channels():
    kinds = {g.kind for g in onnxprune.analyze(conv_bn_relu_chain()).groups}
    assert kinds == {"channels"}


def test_unknown_kind_and_bad_kind_ratio_are_usage_errors():
    model = tiny_transformer()
    with pytest.raises(UsageError, match="no group kind 'heads'"):
        onnxprune.prune(model, onnxprune.PruneConfig(kind_ratios={"heads": 0.5}))
    with pytest.raises(UsageError, match="--head-ratio must be in"):
        onnxprune.prune(model, onnxprune.PruneConfig(kind_ratios={"head": 1.5}))


def test_cli_kind_column_and_hidden_ratio(tmp_path, capsys):
    path = tmp_path / "enc.onnx"
    path.write_bytes(tiny_transformer().SerializeToString())
    assert main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].split()[:3] == ["group", "kind", "size"]
    assert [line.split()[1] for line in shown[2:6]] == ["hidden", "head", "mlp", "mlp"]
    report = tmp_path / "r.json"
    assert main([str(path), "--hidden-ratio", "0", "--head-ratio", "0.5", "--ratio", "0.25",
                 "--report", str(report), "-q"]) == 0
    rows = json.loads(report.read_text())["groups"]
    assert [(r["kind"], r["kept"]) for r in rows] == [("hidden", 8), ("head", 1), ("mlp", 12), ("mlp", 3)]
    assert main([str(path), "--mlp-ratio", "2"]) == 2
    assert "--mlp-ratio must be in [0, 1)" in capsys.readouterr().err
