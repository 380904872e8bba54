"""Fine-tune a pretrained model on local data: `python train.py method=bitfit data=medical_xray`."""

from lokal.cli import hydra_main

if __name__ == "__main__":
    hydra_main()
