#!/usr/bin/env python3
"""Writes the built-in demo task (no download): capitals of countries, asked in several
phrasings. Training rows use four phrasings; the held-out rows ask about the same
countries in a fifth phrasing the model never saw, in alpaca format. Also writes a text
corpus for training the demo's SentencePiece tokenizer.

usage: make_demo_data.py OUTDIR"""
import json
import os
import random
import sys

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Greece", "Athens"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("Belgium", "Brussels"),
    ("Hungary", "Budapest"), ("Romania", "Bucharest"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Russia", "Moscow"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Israel", "Jerusalem"), ("Nepal", "Kathmandu"),
    ("Iceland", "Reykjavik"), ("Australia", "Canberra"), ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"), ("Morocco", "Rabat"), ("Ghana", "Accra"),
]
TRAIN_Q = [
    "What is the capital of {c}?",
    "Name the capital city of {c}.",
    "Which city is the capital of {c}?",
    "Tell me the capital of {c}.",
]
HELDOUT_Q = "{c} has its seat of government in which city?"
ANSWER = "The capital of {c} is {a}."


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7)
    train = [{"instruction": q.format(c=c), "input": "", "output": ANSWER.format(c=c, a=a)}
             for c, a in CAPITALS for q in TRAIN_Q]
    rng.shuffle(train)
    val = [{"instruction": HELDOUT_Q.format(c=c), "input": "", "output": ANSWER.format(c=c, a=a)}
           for c, a in CAPITALS]
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with open(os.path.join(out, name), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    with open(os.path.join(out, "corpus.txt"), "w") as f:
        f.write("Below is an instruction that describes a task. Write a response that "
                "appropriately completes the request.\n### Instruction:\n### Response:\n")
        for r in train + val:
            f.write(r["instruction"] + "\n" + r["output"] + "\n")


if __name__ == "__main__":
    main()
