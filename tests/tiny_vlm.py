"""Tiny, randomly initialised vision-language models built offline, saved to a folder, and loaded
back through the same path a user passes to `--vlm DIR`.

Each family gets a small byte-level BPE tokenizer trained here (the `tokenizers` library) and the
family's own processor class, so the code under test meets the real chat templates, image-token
expansion and padding rules. The weights are random: answers are gibberish, but every code path
(image placement, batching, logits, generation) is the real one. A folder is well under 1 MB and
builds in a fraction of a second once torch and transformers are imported.

    build_idefics3(folder)   SmolVLM's architecture (Idefics3: SigLIP-style tower + pixel shuffle + Llama)
    build_llava(folder)      LLaVA-1.5's architecture (CLIP tower + MLP projector + Llama)
    build_qwen2_vl(folder)   Qwen2-VL's (dynamic resolution: the image-token count follows the photo's
                             size and aspect, so batched rows differ in length and get padded);
                             grounding=True: with its box and reference tokens (<|box_start|> ...)
    build_paligemma(folder)  PaliGemma's (SigLIP tower + Gemma; no chat template, "detect cat"
                             prompts; the processor adds the 1024 <locDDDD> and 128 <segDDD> tokens)
    build_florence2(folder)  Florence-2's (DaViT tower + BART encoder-decoder; task prompts such as
                             <CAPTION_TO_PHRASE_GROUNDING>; 1000 <loc_DDD> tokens)
"""

from __future__ import annotations

from pathlib import Path

# Words the tokenizer is trained on: the prompts the library writes, and answers it parses.
_CORPUS = [
    "Does this photo show: a cat? Answer yes or no.",
    "Yes. No. yes no YES NO",
    "You answer questions about the user's photos. Photo 1: Photo 2: Photo 3: Photo 4:",
    "Describe this photo in one sentence. A dog on the beach, a red car, a receipt, coffee, a rocket.",
    "User: Assistant: System: USER: ASSISTANT: 0 1 2 3 4 5 6 7 8 9 [1] [2] #3",
    "The cat is in photo 2; photos 1 and 3 show the sea.",
]

# A SmolVLM-like chat template (roles capitalised, images inline where the content puts them).
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# LLaVA-1.5's published template renders a message's images first, then its texts (it does not
# interleave them): reproduced in spirit so that the library meets that behaviour in tests.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
    "{% endif %}{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ part['text'] + ' ' }}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# A Qwen2-VL-like template: a default system turn, vision markers around each image.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tokenizer(special: list[str], *, bos: str, eos: str, pad: str, unk: str | None = None, extra=None):
    """A byte-level BPE trained on _CORPUS. Every special token is a trainer special token, so its
    id stays fixed across save and reload."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    kwargs = dict(bos_token=bos, eos_token=eos, pad_token=pad, padding_side="left", **(extra or {}))
    if unk:
        kwargs["unk_token"] = unk
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _text_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> dict:
    return dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        initializer_range=0.2,  # larger than usual: logits that differ visibly between images
    )


def build_idefics3(folder: str | Path, *, seed: int = 0, splitting: bool = False) -> Path:
    """SmolVLM's architecture: vision 32 px / patch 8 -> 16 patches -> pixel shuffle by 2 -> 4 tokens.
    splitting: the processor splits photos into tiles as SmolVLM's own does (up to 4x4 + 1)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    folder = Path(folder)
    image_size, patch_size, scale_factor = 32, 8, 2
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    special = ["<|endoftext|>", "<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>",
               "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = _tokenizer(special, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>",
                           unk="<|endoftext|>")
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": image_size * (4 if splitting else 1)}, max_image_size={"longest_edge": image_size},
        do_image_splitting=splitting,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size, initializer_range=0.2),
        text_config=_text_config(len(tokenizer), ids("<|endoftext|>"), ids("<|im_start|>"), ids("<end_of_utterance>")),
        scale_factor=scale_factor,
        image_token_id=ids("<image>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.eos_token_id = ids("<end_of_utterance>")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_llava(folder: str | Path, *, seed: int = 0) -> Path:
    """LLaVA-1.5's architecture: CLIP tower 32 px / patch 8 -> 16 patch tokens per image."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    folder = Path(folder)
    image_size, patch_size = 32, 8
    tokenizer = _tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                           unk="<unk>")
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=32,
                           initializer_range=0.2),
        text_config=_text_config(len(tokenizer), ids("<pad>"), ids("<s>"), ids("</s>")),
        image_token_index=ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids("<pad>")
    model.generation_config.eos_token_id = ids("</s>")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_qwen2_vl(folder: str | Path, *, seed: int = 0, grounding: bool = False) -> Path:
    """Qwen2-VL's architecture: patch 4, 2x2 merge -> one image token per 8x8 pixels, up to the
    processor's own default pixel budget (28*28*1280 pixels: far more tokens than retriever allows).
    grounding: the tokenizer has Qwen2-VL's box and reference tokens, special as in the real one."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    folder = Path(folder)
    patch, merge, temporal = 4, 2, 2
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    if grounding:
        special += ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"]
    tokenizer = _tokenizer(special, bos="<|im_start|>", eos="<|im_end|>", pad="<|endoftext|>")
    vision = dict(patch_size=patch, merge_size=merge, temporal_patch_size=temporal)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=(patch * merge) ** 2 * 4, **vision),
        video_processor=Qwen2VLVideoProcessor(**vision),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(len(tokenizer), ids("<|endoftext|>"), ids("<|im_start|>"), ids("<|im_end|>"))
    text.pop("model_type")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # head 16
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=patch,
                           spatial_merge_size=merge, temporal_patch_size=temporal, initializer_range=0.2),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_paligemma(folder: str | Path, *, seed: int = 0) -> Path:
    """PaliGemma's architecture: SigLIP tower 32 px / patch 8 -> 16 image tokens, Gemma decoder."""
    import torch
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    folder = Path(folder)
    image_size, patch = 32, 8
    tokenizer = _tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos="<bos>", eos="<eos>", pad="<pad>",
                           unk="<unk>")
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <loc>, <seg>
    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(len(tokenizer), ids("<pad>"), ids("<bos>"), ids("<eos>"))
    text.update(model_type="gemma", head_dim=16)
    config = PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch, projection_dim=64),
        text_config=text, image_token_id=ids("<image>"), projection_dim=64, vocab_size=len(tokenizer),
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids("<pad>")
    model.generation_config.eos_token_id = ids("<eos>")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_florence2(folder: str | Path, *, seed: int = 0) -> Path:
    """Florence-2's architecture: DaViT tower on 64 px (4 stages, stride 32 -> 2x2 + 1 = 5 image
    tokens), BART encoder-decoder; the 1000 <loc_DDD> tokens as in the real tokenizer."""
    import torch
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    folder = Path(folder)
    side = 64
    tokenizer = _tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                           unk="<unk>", extra={"extra_special_tokens": {"image_token": "<image>"}})
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(1000)])
    image_processor = CLIPImageProcessor(size={"height": side, "width": side}, do_center_crop=False,
                                         crop_size={"height": side, "width": side})
    image_processor.image_seq_length = (side // 32) ** 2 + 1
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    config = Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[16, 16, 32, 32], num_heads=[2, 2, 2, 2],
                           num_groups=[2, 2, 2, 2], window_size=2, projection_dim=32, drop_path_rate=0.0),
        text_config=dict(model_type="bart", vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_position_embeddings=256, pad_token_id=ids("<pad>"), bos_token_id=ids("<s>"),
                         eos_token_id=ids("</s>"), decoder_start_token_id=ids("</s>"),
                         forced_eos_token_id=ids("</s>"), init_std=0.2),
        image_token_id=ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids("<pad>")
    model.generation_config.eos_token_id = ids("</s>")
    model.generation_config.decoder_start_token_id = ids("</s>")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


BUILDERS = {"idefics3": build_idefics3, "llava": build_llava, "qwen2_vl": build_qwen2_vl}
# Families that write boxes (retriever locate, ask --boxes): tests/test_grounding.py
GROUNDING_BUILDERS = {"qwen2_vl": lambda folder: build_qwen2_vl(folder, grounding=True),
                      "paligemma": build_paligemma, "florence2": build_florence2}
