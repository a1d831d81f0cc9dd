"""CCL-scheduled ReFL LoRA fine-tuning of SR policies (training/ccl_lora.py): the curriculum schedule
(``schedule``), data, monitor, export, full-size components for the benchmarks. The policies and the
reward live in the core library (:mod:`diffusers_ext.policies`, :mod:`diffusers_ext.rewards`)."""
