"""`python -m tuneforge.cli ...` (and `accelerate launch -m tuneforge.cli train run.yaml`).

python -m tuneforge.cli train examples/cheese_lora.yaml --max_steps 2
"""

import sys

from tuneforge.cli import main

sys.exit(main())
