"""Tool commands that are not training runs.

  python -m bagtricks.tools.convert_torch --input=resnet50d.safetensors --model=resnet50d \
      --out_dir=runs/resnet50d_timm
"""
