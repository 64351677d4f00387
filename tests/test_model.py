"""Processor, tiny model, composition (ViT + fresh projector + LLM) and per-part training."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

from mimovl.model import (
    DEFAULT_SYSTEM_PROMPT,
    MIMO_VL_7B,
    build_tiny,
    build_tiny_processor,
    load_hf,
    load_processor,
    param_groups,
    part_of,
    set_trainable,
)
from mimovl.model.build import mrope_section
from mimovl.model.compose import check_shapes, compose, compose_config
from mimovl.model.processor import SPECIAL_TOKENS, THINK_TOKENS

LLM_HIDDEN, LLM_ROPE_THETA = 96, 10_000.0  # differ from the ViT dir's LLM so carrying them over is visible


def image_prompt(processor, text="How many red circles?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------- processor


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


def test_tokens_special_and_think_ordered_after_bpe(processor):
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + THINK_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # Qwen2-VL's order, right after the BPE vocabulary
    assert ids[-1] == len(tok) - 1 and len(tok) <= 1024
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    text = "<think>2 + 3 = 5</think>The answer is [1, 2, 3, 4].<|im_end|>"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text.removesuffix("<|im_end|>")
    assert tok.decode(tok(text)["input_ids"]) == text


def test_chat_template_default_system_prompt_and_parts(processor):
    parts = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Hi"}]
    messages = [{"role": "user", "content": parts}]
    assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(own, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_processor_expands_image_tokens(processor, make_image, tmp_path):
    batch = processor(text=[image_prompt(processor)], images=[make_image()], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 12]]  # 112x168 pixels / patch 14
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    is_image = batch["input_ids"][0] == image_id
    assert is_image.sum().item() == 8 * 12 // 4  # one token per 2x2 merged patches
    assert torch.equal(batch["mm_token_type_ids"][0].bool(), is_image)
    assert batch["pixel_values"].shape == (8 * 12, 3 * 2 * 14 * 14)

    processor.save_pretrained(tmp_path)
    reloaded = load_processor(tmp_path)
    again = reloaded(text=[image_prompt(processor)], images=[make_image()], return_tensors="pt")
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_processor_expands_video_tokens(processor):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When?"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    frames = torch.randint(0, 256, (4, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = processor(text=[prompt], videos=[frames.numpy()], return_tensors="pt")
    assert batch["video_grid_thw"].tolist() == [[2, 8, 8]]  # 4 frames / temporal patch 2, 112 px / 14
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert (batch["input_ids"][0] == video_id).sum().item() == 2 * 8 * 8 // 4


# ---------------------------------------------------------------------------------------------- tiny model


def test_build_tiny_is_seeded_and_sized():
    a, _ = build_tiny(seed=0)
    b, _ = build_tiny(seed=0)
    c, _ = build_tiny(seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    text = a.config.text_config
    assert text.rope_parameters["mrope_section"] == [4, 6, 6]  # head_dim 32 -> 16 rotary pairs
    assert a.config.vision_config.out_hidden_size == text.hidden_size
    assert text.vocab_size % 64 == 0 and next(a.parameters()).dtype == torch.float32
    assert mrope_section(128) == [16, 24, 24]  # Qwen2.5-VL-7B / MiMo-VL-7B


def test_load_hf_names_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hf(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)


# ---------------------------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(vit_dir, llm_dir, vit_source_model, llm_source_model): a tiny Qwen2.5-VL and a tiny Qwen2 LLM
    whose safetensors also carry fake MTP tensors, as MiMo-7B-Base does."""
    root = tmp_path_factory.mktemp("sources")
    vl, processor = build_tiny(seed=1)
    vl.save_pretrained(root / "vit")
    processor.save_pretrained(root / "vit")

    config = Qwen2Config(
        vocab_size=vl.config.text_config.vocab_size, hidden_size=LLM_HIDDEN, intermediate_size=192,
        num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1, rope_theta=LLM_ROPE_THETA,
        max_position_embeddings=2048, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        llm = Qwen2ForCausalLM(config).eval()
    llm.save_pretrained(root / "llm")
    processor.tokenizer.save_pretrained(root / "llm")
    weights = load_file(root / "llm" / "model.safetensors")
    weights["model.mtp_layers.0.input_proj.weight"] = torch.randn(LLM_HIDDEN, 2 * LLM_HIDDEN)
    weights["model.mtp_layers.0.final_layernorm.weight"] = torch.ones(LLM_HIDDEN)
    save_file(weights, root / "llm" / "model.safetensors", metadata={"format": "pt"})
    return root / "vit", root / "llm", vl.eval(), llm


@pytest.fixture(scope="module")
def composed(sources):
    vit_dir, llm_dir, _, _ = sources
    model, processor = compose(vit_dir, llm_dir, seed=0, dtype="float32")
    return model.eval(), processor


def test_compose_takes_vit_and_llm_weights_bitwise(sources, composed):
    _, _, vl, llm = sources
    model, _ = composed
    got = model.state_dict()
    vit = {k: v for k, v in vl.state_dict().items() if k.startswith("model.visual.") and ".merger." not in k}
    assert len(vit) == 25 and all(torch.equal(got[k], v) for k, v in vit.items())
    for name, value in llm.state_dict().items():
        ours = name if name.startswith("lm_head.") else "model.language_model." + name.removeprefix("model.")
        assert torch.equal(got[ours], value), name
    n_llm = sum(p.numel() for n, p in model.named_parameters() if part_of(n) == "llm")
    assert n_llm == sum(p.numel() for p in llm.parameters())  # nothing extra, MTP included
    assert not any("mtp" in k for k in got)


def test_compose_projector_is_fresh_and_seeded(sources, composed, caplog):
    model, _ = composed
    merger = {k: v for k, v in model.state_dict().items() if ".merger." in k}
    assert merger["model.visual.merger.mlp.2.weight"].shape == (LLM_HIDDEN, 4 * 32)  # into the LLM's width
    assert torch.equal(merger["model.visual.merger.ln_q.weight"], torch.ones(32))
    assert merger["model.visual.merger.mlp.0.bias"].abs().max() == 0
    assert abs(merger["model.visual.merger.mlp.0.weight"].std().item() - 0.02) < 0.002  # initializer_range

    vit_dir, llm_dir, _, _ = sources
    with caplog.at_level(logging.INFO, logger="mimovl.model.compose"):
        same, _ = compose(vit_dir, llm_dir, seed=0, dtype="float32")
        other, _ = compose(vit_dir, llm_dir, seed=1, dtype="float32")
    key = "model.visual.merger.mlp.0.weight"
    assert torch.equal(same.state_dict()[key], merger[key])
    assert not torch.equal(other.state_dict()[key], merger[key])
    assert "model.mtp_layers.0.input_proj.weight" in caplog.text  # the drop is logged by name


def test_compose_config_from_components(sources, composed):
    _, _, vl, _ = sources
    model, processor = composed
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (LLM_HIDDEN, 3, 1)
    assert text.rope_parameters["rope_theta"] == LLM_ROPE_THETA
    assert text.rope_parameters["mrope_section"] == [4, 6, 6]
    assert vision.out_hidden_size == LLM_HIDDEN and vision.depth == vl.config.vision_config.depth
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_compose_text_logits_equal_source_llm(sources, composed):
    """Parity against transformers' reference forward of the LLM we started from."""
    _, _, _, llm = sources
    model, processor = composed
    text = "A small red circle is at the left of the image, 3 of 7."
    ids = processor.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        ours = model(input_ids=ids["input_ids"]).logits
        reference = llm(input_ids=ids["input_ids"]).logits
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_compose_image_forward_equals_reloaded(composed, make_image, tmp_path):
    model, processor = composed
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = image_prompt(processor)
    batch = processor(text=[prompt], images=[make_image(seed=0)], return_tensors="pt")
    other = processor(text=[prompt], images=[make_image(seed=1)], return_tensors="pt")
    with torch.no_grad():
        ours, theirs = model(**batch).logits, reloaded(**batch).logits
        ours_other = model(**other).logits
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert (ours - ours_other).abs().max() > 1e-3  # the image reaches the logits through the projector


def test_compose_bfloat16_equals_reloaded(sources, make_image, tmp_path):
    """The 7B path's dtype: parameters in bf16, RoPE buffers in float32, exactly as from_pretrained has them."""
    vit_dir, llm_dir, _, _ = sources
    model, processor = compose(vit_dir, llm_dir, dtype="bfloat16")
    model.eval().save_pretrained(tmp_path)
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {n: b.dtype for n, b in model.named_buffers()} == {n: b.dtype for n, b in reloaded.named_buffers()}
    batch = processor(text=[image_prompt(processor)], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_compose_errors_name_the_problem(sources, tmp_path):
    vit_dir, llm_dir, _, _ = sources
    with pytest.raises(FileNotFoundError, match="no_such_vit"):
        compose(tmp_path / "no_such_vit", llm_dir)
    with pytest.raises(FileNotFoundError, match="config.json"):
        compose(vit_dir, tmp_path)
    with pytest.raises(ValueError, match=r"vision\.depth: expected 32, got 2") as err:
        compose(vit_dir, llm_dir, expect_shapes=True)
    assert "llm.hidden_size: expected 4096, got 96" in str(err.value)

    broken = tmp_path / "llm"
    broken.mkdir()
    for f in llm_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KeyError, match=r"model\.language_model\.layers\.1\.mlp\.up_proj\.weight"):
        compose(vit_dir, broken, dtype="float32")


def test_check_shapes_accepts_the_paper_shapes():
    check_shapes(dict(MIMO_VL_7B["vision"]), dict(MIMO_VL_7B["llm"]))
    with pytest.raises(ValueError, match=r"llm\.num_key_value_heads: expected 8, got 4"):
        check_shapes(dict(MIMO_VL_7B["vision"]), MIMO_VL_7B["llm"] | {"num_key_value_heads": 4})


# ---------------------------------------------------------------------------------------------- parts


def test_part_of_names():
    assert part_of("model.visual.blocks.0.attn.qkv.weight") == "vit"
    assert part_of("model.visual.patch_embed.proj.weight") == "vit"
    assert part_of("model.visual.merger.mlp.0.weight") == "projector"
    assert part_of("model.language_model.layers.0.mlp.up_proj.weight") == "llm"
    assert part_of("lm_head.weight") == "llm"
    assert part_of("model.model.visual.merger.ln_q.weight") == "projector"  # inside a LightningModule
    with pytest.raises(ValueError, match="rope_deltas"):
        part_of("rope_deltas")


def test_set_trainable_and_param_groups():
    model, _ = build_tiny()
    total = {p: sum(x.numel() for n, x in model.named_parameters() if part_of(n) == p)
             for p in ("vit", "projector", "llm")}

    counts = set_trainable(model, ["projector"])  # stage 1
    assert counts == {"vit": 0, "projector": total["projector"], "llm": 0}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".merger." in n}

    set_trainable(model, ["vit", "projector"])  # stage 2: two learning rates
    groups = param_groups(model, {"projector": 1e-4, "vit": 1e-5, "llm": 0.0}, weight_decay=0.1)
    summary = [(g["name"], g["lr"], g["weight_decay"]) for g in groups]
    assert summary == [("vit", 1e-5, 0.1), ("projector", 1e-4, 0.1)]
    assert [sum(p.numel() for p in g["params"]) for g in groups] == [total["vit"], total["projector"]]

    set_trainable(model, ["vit", "projector", "llm"])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(total.values())
    with pytest.raises(ValueError, match="'decoder'"):
        set_trainable(model, ["llm", "decoder"])
    with pytest.raises(KeyError, match="llm"):
        param_groups(model, {"vit": 1e-5, "projector": 1e-4}, weight_decay=0.0)


# ---------------------------------------------------------------------------------------------- 7B shapes

# The config.json layouts of Qwen2.5-VL-7B-Instruct (flat text fields, legacy vision keys) and MiMo-7B-Base
# (model_type "mimo", an MTP layer), written out so the 7B path is checked without the weights.
QWEN25_VL_7B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "torch_dtype": "bfloat16",
    "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
        "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2, "temporal_patch_size": 2,
    },
}
MIMO_7B_BASE_CONFIG = {
    "architectures": ["MiMoForCausalLM"], "model_type": "mimo", "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 11008, "max_position_embeddings": 32768, "num_attention_heads": 32,
    "num_hidden_layers": 36, "num_key_value_heads": 8, "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-05,
    "rope_theta": 640000, "tie_word_embeddings": False, "vocab_size": 151680, "use_sliding_window": False,
}


def test_paper_scale_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_VL_7B_CONFIG))
    vision = Qwen2_5_VLConfig.from_pretrained(tmp_path).vision_config.to_dict()
    check_shapes(vision, MIMO_7B_BASE_CONFIG)  # the real component configs pass expect_shapes
    config = compose_config(vision, MIMO_7B_BASE_CONFIG, build_tiny_processor().tokenizer)
    assert config.text_config.rope_parameters == {
        "rope_type": "default", "rope_theta": 640000, "mrope_section": [16, 24, 24]}
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["model.visual.merger.mlp.0.weight"] == (5120, 5120)  # 2x2 merged 1280-wide patches
    assert shapes["model.visual.merger.mlp.2.weight"] == (4096, 5120)  # into MiMo-7B's width
    assert shapes["lm_head.weight"] == (151680, 4096)
    counts = {part: sum(p.numel() for n, p in model.named_parameters() if part_of(n) == part)
              for part in ("vit", "projector", "llm")}
    assert counts["projector"] == 1280 + (5120 * 5120 + 5120) + (5120 * 4096 + 4096)  # RMSNorm, 2 Linear
    layer = 4096 * (4096 + 2 * 1024) + (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert counts["llm"] == 36 * layer + 2 * 151680 * 4096 + 4096  # layers, embed + lm_head, final norm
    assert counts["vit"] == 631_975_680  # Qwen2.5-ViT without its merger
