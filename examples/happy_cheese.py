"""Seed 001's HappyTransformer script, run on tuneforge: only the import line and model name are changed.

    python examples/happy_cheese.py                                  # 2 epochs over 2,000 lines, as in the seed
    TUNEFORGE_EPOCHS=0.02 python examples/happy_cheese.py            # CI: a few steps
    python examples/happy_cheese.py path/to/cheese_instructions.txt 0.02

It reads ../shared/data/cheese_instructions.txt relative to the repository (or TUNEFORGE_CHEESE / argv[1])
and writes preprocessed-data.json and model/ into the current folder (the run folder is temporary). The
lines between the two "---" comments are the seed's script; `num_train_epochs` and `input_filepath` read the
two settings above.
"""

import os
import sys
from pathlib import Path

CHEESE = (
    sys.argv[1]
    if len(sys.argv) > 1
    else os.environ.get("TUNEFORGE_CHEESE")
    or str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cheese_instructions.txt")
)
EPOCHS = float(sys.argv[2] if len(sys.argv) > 2 else os.environ.get("TUNEFORGE_EPOCHS", 2))

# --- seed 001's script ---
from tuneforge.happy import HappyGeneration, GENSettings, GENTrainArgs  # noqa: E402, I001

prompt = "To make a cheese sandwich "
print(prompt)

# 1. Initiate a generator
happy_gen = HappyGeneration(model_type="GPT-NEO", model_name="default")

generator_args = GENSettings(
    no_repeat_ngram_size=2, do_sample=True, early_stopping=False, top_k=5, temperature=0.8, max_length=30
)

# 2. show what output it produces before training
print("RESULT BEFORE MORE... TRAINING....")
print("1:")
result = happy_gen.generate_text(prompt, args=generator_args)
print(prompt)
print(result.text)
print("2:")
result = happy_gen.generate_text(prompt, args=generator_args)
print(prompt)
print(result.text)
print("3:")
result = happy_gen.generate_text(prompt, args=generator_args)
print(prompt)
print(result.text)

# 3. Train it

# Description of the training args is coming up soon
trainer_args = GENTrainArgs(
    learning_rate=8e-5,
    num_train_epochs=EPOCHS,
    save_preprocessed_data=True,
    save_preprocessed_data_path="preprocessed-data.json",
    batch_size=4,
)
# input_filepath  -- a path file to a text file that contains nothing but text to train the model.
happy_gen.train(input_filepath=CHEESE, args=trainer_args)

# 4. show what output it produces after training
print("RESULT AFTER TRAINING....")
print("1:")
result = happy_gen.generate_text(prompt, args=generator_args)
print(prompt)
print(result.text)
print("2:")
result = happy_gen.generate_text(prompt, args=generator_args)
print(prompt)
print(result.text)
print("3:")
result = happy_gen.generate_text(prompt, args=generator_args)
print(prompt)
print(result.text)

# 5. Save our trained model
happy_gen.save("model/")
# --- end of seed 001's script ---
