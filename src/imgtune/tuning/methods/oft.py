"""OFT and BOFT: orthogonal rotations of each target's weights (block-diagonal, or butterfly)."""

from __future__ import annotations

from dataclasses import dataclass

import peft

from imgtune.tuning.methods.base import AdapterArgs, Method, register


@dataclass(frozen=True)
class OFT(Method):
    def peft_config(self, a: AdapterArgs) -> peft.OFTConfig:
        # peft wants either r (number of blocks) or oft_block_size; block size is the one that
        # does not depend on the layer width, so --rank means the block size here.
        return peft.OFTConfig(
            r=0,
            oft_block_size=a.rank,
            module_dropout=a.dropout,
            target_modules=a.target_modules,
            modules_to_save=a.head_modules,
            **a.options,
        )


@dataclass(frozen=True)
class BOFT(Method):
    def peft_config(self, a: AdapterArgs) -> peft.BOFTConfig:
        # One butterfly factor: without its CUDA extension (every CPU, most GPU installs) peft builds
        # factor 1 whatever the config says, and an adapter saved with factor 2 would then not load
        # on a machine where the extension does build. 1 keeps saved configs and weights in agreement.
        opts = {"boft_n_butterfly_factor": 1, **a.options}
        return peft.BOFTConfig(
            boft_block_size=a.rank,
            boft_dropout=a.dropout,
            target_modules=a.target_modules,
            modules_to_save=a.head_modules,
            **opts,
        )


register(OFT("oft", "Orthogonal fine-tuning with block-diagonal rotations (--rank = block size)", rank=16, dropout=0.0))
register(BOFT("boft", "Butterfly orthogonal fine-tuning (--rank = block size)", rank=4, dropout=0.0))
