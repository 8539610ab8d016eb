"""Training AnyRef: LoRA + DeepSpeed ZeRO-2, a dataset mixture, atomic checkpoints and exact resume.

    anyref train --preset synthref-tiny --out runs/synthref-tiny
    deepspeed --num_gpus 8 --module train.loop --config my_config.json --out runs/full
"""
