"""Ask your photos: a vision-language model (VLM) over retriever's search results.

    model.py     load_vlm: a local folder or a hub id (cache first, a bounded hub probe, then a fast
                 clear error), bounded image tokens per photo, prompts through the chat template
    models.py    the models known by name: published sizes and image-token counts; the defaults
    prompts.py   every chat retriever sends
    photos.py    photos decoded for the model (safe decoder, video frames); viewing order
    rerank.py    search --rerank: log P(yes) - log P(no) per candidate, batched
    ask.py       retriever ask: one chat with k numbered photos, citations parsed back to files
    captions.py  retriever caption: captions in the catalog, incremental and resumable
    grounding.py where in the photo: each family's box markup (Qwen2-VL, Qwen2.5-VL, PaliGemma,
                 Florence-2) parsed onto the photo's pixels; pure Python
    locate.py    retriever locate: the boxes for a phrase on one photo; drawing them
    finetune.py  retriever finetune-vlm: a LoRA adapter trained on the user's (photo, caption) and
                 (photo, question, answer) pairs, the loss on the answer's tokens only
    adapters.py  those adapters in the index (INDEX/vlm-adapters/), written atomically, used only
                 with the weights they were trained on (load_vlm(..., adapter_from=INDEX))
    keywords.py  FTS5 keyword search over file names and captions; reciprocal rank fusion with the
                 vector ranking (fuse, fuse_hits) for hybrid search

Nothing here imports torch or transformers at import time; they are needed only to load a model
(`pip install 'retriever[vlm]'`). keywords.py needs neither, ever.
"""

from __future__ import annotations

from retriever.vlm.errors import VLMError, VLMLoadError, VLMNotFoundError

__all__ = ["VLMError", "VLMLoadError", "VLMNotFoundError"]
