"""The exported directory reloads in transformers (identical logits) and in vLLM (identical greedy tokens)."""

import json

import pytest
import torch

from mimovl.model import build_tiny, export_hf, export_state_dict, load_hf


def image_batch(processor, image, text="Describe the picture."):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt, processor(text=[prompt], images=[image], return_tensors="pt")


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny(seed=0)
    return model.eval(), processor


def test_export_files(tiny_hf_dir):
    names = {p.name for p in tiny_hf_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json"} <= names
    config = json.loads((tiny_hf_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"] and config["dtype"] == "float32"
    generation = json.loads((tiny_hf_dir / "generation_config.json").read_text())
    tokenizer = load_hf(tiny_hf_dir)[1].tokenizer
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])


def test_export_reloads_with_identical_logits(tiny, tiny_hf_dir, make_image):
    model, processor = tiny  # the same build_tiny(seed=0) that tiny_hf_dir holds
    reloaded, reprocessor = load_hf(tiny_hf_dir)
    prompt, batch = image_batch(processor, make_image())
    again = reprocessor(text=[prompt], images=[make_image()], return_tensors="pt")
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**again).logits, model(**batch).logits, atol=0, rtol=0)


def test_export_state_dict_from_a_wrapper(tiny, tmp_path, make_image):
    """A full state dict as a LightningModule's FSDP gather names it (`model.` + in-memory names)."""
    model, processor = tiny
    gathered = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    export_state_dict(gathered, model.config, processor, tmp_path / "out", dtype="bfloat16")
    reloaded, _ = load_hf(tmp_path / "out", dtype="float32")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert model.config.dtype in (None, torch.float32)  # the live model's config is untouched
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[name].to(torch.bfloat16).float()), name

    del gathered["model.lm_head.weight"]
    with pytest.raises(RuntimeError, match="lm_head.weight"):
        export_state_dict(gathered, model.config, processor, tmp_path / "bad")


def test_export_hf_takes_an_explicit_state_dict(tiny, tmp_path, make_image):
    model, processor = tiny
    changed = {k: v + 0.01 if k == "lm_head.weight" else v for k, v in model.state_dict().items()}
    export_hf(model, processor, tmp_path, state_dict=changed)
    reloaded, _ = load_hf(tmp_path)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight + 0.01)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_greedy_equals_transformers_generate(vllm_engine, tiny_hf_dir, make_image):
    from vllm import SamplingParams

    model, processor = load_hf(tiny_hf_dir)
    model.eval()
    images = [make_image(seed=0), make_image(width=224, height=224, seed=1)]
    texts = ["Describe it.", "How many?"]
    prompts = [image_batch(processor, image, text) for image, text in zip(images, texts)]
    vllm_engine.sync(model.state_dict().items())
    outputs = vllm_engine.llm.generate(
        [{"prompt": p, "multi_modal_data": {"image": image}} for (p, _), image in zip(prompts, images)],
        SamplingParams(temperature=0.0, max_tokens=16),
    )
    for (_, batch), output in zip(prompts, outputs):
        assert output.prompt_token_ids == batch["input_ids"][0].tolist()  # same image-token expansion
        generated = model.generate(**batch, max_new_tokens=16, do_sample=False)
        expected = generated[0, batch["input_ids"].shape[1]:].tolist()
        assert list(output.outputs[0].token_ids) == expected
        assert len(expected) >= 8  # a real comparison, not two empty answers


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_and_transformers_score_the_tokens_after_a_video_alike(vllm_engine, tiny_hf_dir):
    """The tokens after a video sit at the same MRoPE positions in both (mimovl.model.mrope): the log-probabilities
    of vLLM's greedy answer agree within 1e-4 (measured 5e-7; with transformers' own positions 2e-3)."""
    from vllm import SamplingParams

    from mimovl.data.encode import encode_response
    from mimovl.data.synthetic import make_sample
    from mimovl.generate.engines import _vllm_request
    from mimovl.generate.prompts import to_prompt

    model, processor = load_hf(tiny_hf_dir)
    model.eval()
    vllm_engine.sync(model.state_dict().items())
    for k in range(2):
        prompt = to_prompt(make_sample("video", k, split="heldout"))
        out = vllm_engine.llm.generate([_vllm_request(prompt, processor)], SamplingParams(
            temperature=0.0, max_tokens=8, logprobs=0), use_tqdm=False)[0].outputs[0]
        ids = list(out.token_ids)
        assert len(ids) == 8
        encoded = encode_response(prompt.sample, ids, processor)
        with torch.no_grad():
            logp = model(input_ids=encoded.input_ids[None], mm_token_type_ids=encoded.mm_token_type_ids[None],
                         pixel_values_videos=encoded.pixel_values_videos, video_grid_thw=encoded.video_grid_thw,
                         second_per_grid_ts=encoded.second_per_grid_ts).logits[0].log_softmax(-1)
        first = len(encoded.input_ids) - len(ids) - 1
        theirs = torch.tensor([logp[first + i, t].item() for i, t in enumerate(ids)])
        vllm = torch.tensor([step[t].logprob for step, t in zip(out.logprobs, ids)])
        assert torch.allclose(theirs, vllm, atol=1e-4), (theirs - vllm).abs().max()
