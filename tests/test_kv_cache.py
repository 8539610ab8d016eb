"""The preallocated decoding cache gives a LLaMA decoder exactly what DynamicCache gives it, also past its planned
capacity, and writes in place instead of concatenating; and it goes to the decoder by the keyword the installed
transformers takes."""
import inspect
import warnings

import torch
from peft import LoraConfig, get_peft_model
from transformers import DynamicCache, LlamaConfig, LlamaModel

from anyref.kv_cache import cache_argument, preallocated_cache


def _decode(model, cache, embeds, steps):
    out = model(inputs_embeds=embeds, use_cache=True, **cache_argument(model, cache)).last_hidden_state[:, -1:]
    states = [out]
    for _ in range(steps):
        out = model(inputs_embeds=out, use_cache=True, **cache_argument(model, cache)).last_hidden_state[:, -1:]
        states.append(out)
    return torch.cat(states, 1)


def _tiny_llama() -> LlamaModel:
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=16, max_position_embeddings=64)
    return LlamaModel(config).eval()


def test_equals_dynamic_cache_and_grows_past_capacity():
    torch.manual_seed(0)
    model = _tiny_llama()
    embeds = torch.randn(3, 7, 32)
    with torch.no_grad():
        expected = _decode(model, DynamicCache(), embeds, steps=6)
        for capacity in (13, 9):  # exactly enough, and too little (the buffers grow once)
            cache = preallocated_cache(2, capacity)
            got = _decode(model, cache, embeds, steps=6)
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
            assert cache.get_seq_length() == 13 and cache.layers[0].keys.shape == (3, 2, 13, 8)
    buffer = preallocated_cache(2, 13).layers[0]
    buffer.update(torch.ones(3, 2, 4, 8), torch.ones(3, 2, 4, 8))
    storage = buffer.keys.data_ptr()
    buffer.update(torch.zeros(3, 2, 1, 8), torch.zeros(3, 2, 1, 8))
    assert buffer.keys.data_ptr() == storage and buffer.keys.shape[2] == 5  # written in place, no new tensor


def test_cache_goes_by_the_keyword_the_decoder_takes():
    plain = _tiny_llama()
    wrapped = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))  # forward(*args, **kwargs)
    for model in (plain, wrapped):
        (keyword,) = cache_argument(model, DynamicCache())
        assert keyword in inspect.signature(LlamaModel.forward).parameters
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            _decode(model, DynamicCache(), torch.randn(1, 3, 32), steps=1)
        assert not [w for w in caught if "past_key_values" in str(w.message)]  # 5.25 warns on the old name each call
