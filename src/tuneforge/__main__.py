"""`python -m tuneforge ...`: the `tuneforge` command, for launchers that run modules (torchrun, accelerate).

torchrun --nproc_per_node 2 -m tuneforge train examples/cheese_lora.yaml
"""

import sys

from tuneforge.cli import main

sys.exit(main())
