from server.api.summary import summarise


def test_summary_names_token_ops_and_widths():
    block = {"heads": 2, "mlp_hidden": 384, "tokens": {"kind": "topk", "keep_ratio": 0.7}}
    text = summarise({"blocks": [block, block | {"tokens": {"kind": "none"}}], "package_token": True})
    assert text == "keep 0.7@0; heads 2 per block; mlp 384 per block; package token"
    mixed = [{"heads": 3, "mlp_hidden": 768, "tokens": {"kind": "threshold", "threshold": 1.0}}, block]
    assert summarise({"blocks": mixed}) == "thr 1@0, keep 0.7@1; heads 3/2; mlp 768/384"
    assert summarise({"blocks": mixed}, "int8-pow2") == "thr 1@0, keep 0.7@1; heads 3/2; mlp 768/384; int8-pow2"
    with_float = summarise({"blocks": mixed}, "int8", [0, 11])
    assert with_float == "thr 1@0, keep 0.7@1; heads 3/2; mlp 768/384; int8 but blocks 0/11 fp32"
