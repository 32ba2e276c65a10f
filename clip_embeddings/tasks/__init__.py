"""CLIP-level tasks built on the embedding function: zero-shot classification and moderation
(:mod:`.zeroshot`), fine-tuning and linear probes (:mod:`.finetune`), evaluation (:mod:`.evaluation`),
caption scores (:mod:`.scores`),
tags at ingest (:mod:`.tags`).
"""
