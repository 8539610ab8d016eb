"""The mask head: gamma's shape, and the batched decoding equal to SAM's own MaskDecoder.forward prompt by prompt."""
import torch

from anyref.heads import ObjProjection, decode_masks


def test_batched_decoding_equals_sam_mask_decoder(tiny_model):
    sam = tiny_model.sam
    torch.manual_seed(0)
    grid = sam.prompt_encoder.image_embedding_size
    embeddings = torch.randn(3, sam.prompt_encoder.embed_dim, *grid)
    prompts = torch.randn(3, sam.prompt_encoder.embed_dim)
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *grid)
    with torch.no_grad():
        batched = decode_masks(sam, embeddings, prompts)
        one_image = decode_masks(sam, embeddings[:1], prompts)
        for i in range(3):
            expected, _ = sam.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                                           sparse_prompt_embeddings=prompts[i:i + 1, None],
                                           dense_prompt_embeddings=dense, multimask_output=False)
            torch.testing.assert_close(batched[i:i + 1], expected, atol=1e-5, rtol=1e-5)
            same, _ = sam.mask_decoder(image_embeddings=embeddings[:1], image_pe=sam.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=prompts[i:i + 1, None],
                                       dense_prompt_embeddings=dense, multimask_output=False)
            torch.testing.assert_close(one_image[i:i + 1], same, atol=1e-5, rtol=1e-5)
    assert batched.shape == (3, 1, 4 * grid[0], 4 * grid[1])


def test_gamma_maps_llm_states_to_sam_prompts():
    gamma = ObjProjection(48, 16)
    assert gamma(torch.zeros(5, 48)).shape == (5, 16)
    assert [type(m).__name__ for m in gamma] == ["Linear", "ReLU", "Linear"]


def test_batched_decoding_of_box_prompts_equals_sam_mask_decoder(tiny_model):
    """Prompts of several tokens (SAM's prompt encoder's two box corners) decode as SAM's own decoder does."""
    sam = tiny_model.sam
    torch.manual_seed(1)
    grid = sam.prompt_encoder.image_embedding_size
    embeddings = torch.randn(2, sam.prompt_encoder.embed_dim, *grid)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 5.0, 30.0, 40.0]])
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        batched = decode_masks(sam, embeddings, sparse)
        for i in range(2):
            expected, _ = sam.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                                           sparse_prompt_embeddings=sparse[i:i + 1], dense_prompt_embeddings=dense[:1],
                                           multimask_output=False)
            torch.testing.assert_close(batched[i:i + 1], expected, atol=1e-5, rtol=1e-5)
