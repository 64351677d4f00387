"""Data curation over shards: one command per step, streaming shard to shard, each with a JSON report.

    python -m mimovl.curate <step> --input 'data/cap-*.tar' --out 'cur/<step>/cap-%06d.tar' [options]

Steps (one module each; `python -m mimovl.curate <step> --help` lists the options):
  dedup        drop samples with an image near (phash) an image already kept          (dedup, phash)
  decontam     drop samples with an image near an evaluation image (--eval)           (decontam, phash)
  filter       drop samples whose supervised text is short, long, noisy or repetitive  (textfilter)
  balance      MetaCLIP concept balancing of captions (cap each concept near t)        (balance)
  ocr_augment  handwriting, occlusion, perspective, elastic and blur on OCR samples,
               boxes moved along                                                       (ocr_augment)
  recaption    caption images again with a model, keep new captions that pass the
               repetition checks                                                       (recaption)

Each run writes shards named by --out and, last, report.json beside them: the step, its params, the input
fingerprint, counts (in, out, removed, removed_by_reason, modified, passed_through, read_errors), step stats,
and every removed sample with its key, shard, reason and evidence (e.g. the near-duplicate's key and distance).
A rerun with the same arguments over unchanged inputs whose report says done does nothing; any other rerun
starts the step over cleanly (mimovl.curate.runner has the exact rule). Kept samples keep their bytes.
"""
