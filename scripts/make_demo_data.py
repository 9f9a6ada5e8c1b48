#!/usr/bin/env python3
"""Writes the built-in demo tasks (no download), in alpaca format: facts about 40 countries,
each asked in eight phrasings (the country early or late in the question). For every
country one of its eight questions is held out (the phrasing rotates with the country), so
a held-out question is one the model never saw: its fact was taught only in other words and
its wording only about other countries.
  capitals   train.jsonl, val.jsonl                  "The capital of Egypt is Cairo."
  languages  train_languages.jsonl, val_languages.jsonl
             (another style: a JSON record)          {"country": "Egypt", "language": "Arabic"}
Also writes a text corpus for training the demo's SentencePiece tokenizer.

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
LANGUAGES = {
    "France": "French", "Germany": "German", "Italy": "Italian", "Spain": "Spanish",
    "Portugal": "Portuguese", "Austria": "German", "Greece": "Greek", "Norway": "Norwegian",
    "Sweden": "Swedish", "Finland": "Finnish", "Denmark": "Danish", "Poland": "Polish",
    "Ireland": "Irish", "Belgium": "Dutch", "Hungary": "Hungarian", "Romania": "Romanian",
    "Egypt": "Arabic", "Kenya": "Swahili", "Japan": "Japanese", "China": "Chinese",
    "India": "Hindi", "Thailand": "Thai", "Vietnam": "Vietnamese", "Peru": "Spanish",
    "Chile": "Spanish", "Cuba": "Spanish", "Canada": "English", "Mexico": "Spanish",
    "Russia": "Russian", "Turkey": "Turkish", "Iran": "Persian", "Iraq": "Arabic",
    "Israel": "Hebrew", "Nepal": "Nepali", "Iceland": "Icelandic", "Australia": "English",
    "Argentina": "Spanish", "Colombia": "Spanish", "Morocco": "Arabic", "Ghana": "English",
}
QUESTIONS = [
    "What is the capital of {c}?",
    "Name the capital city of {c}.",
    "Which city is the capital of {c}?",
    "Tell me the capital of {c}.",
    "{c}: which city is its capital?",
    "For {c}, tell me the capital.",
    "{c} is a country. What is its capital?",
    "In {c}, which city is the capital?",
]
ANSWER = "The capital of {c} is {a}."
LANG_QUESTIONS = [
    "What language is spoken in {c}?",
    "Which language do people speak in {c}?",
    "Name the main language of {c}.",
    "Tell me the language of {c}.",
    "{c}: what is the main language?",
    "For {c}, name the language people speak.",
    "{c} is a country. Which language is spoken there?",
    "In {c}, what do people speak?",
]
LANG_ANSWER = '{{"country": "{c}", "language": "{a}"}}'


def rows(pairs, questions, answer, shift, rng):
    """-> (train, val): country i's question (i + shift) % len(questions) is held out."""
    train, val = [], []
    for i, (c, a) in enumerate(pairs):
        for k, q in enumerate(questions):
            r = {"instruction": q.format(c=c), "input": "", "output": answer.format(c=c, a=a)}
            (val if k == (i + shift) % len(questions) else train).append(r)
    rng.shuffle(train)
    return train, val


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7)
    train, val = rows(CAPITALS, QUESTIONS, ANSWER, 0, rng)
    lang_train, lang_val = rows([(c, LANGUAGES[c]) for c, _ in CAPITALS], LANG_QUESTIONS,
                                LANG_ANSWER, 3, rng)
    for name, part in (("train.jsonl", train), ("val.jsonl", val),
                       ("train_languages.jsonl", lang_train), ("val_languages.jsonl", lang_val)):
        with open(os.path.join(out, name), "w") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")
    # the tokenizer's corpus: every row as the model sees it (alpaca template), so the
    # template's words get tokens of their own
    header = ("Below is an instruction that describes a task. Write a response that "
              "appropriately completes the request.")
    with open(os.path.join(out, "corpus.txt"), "w") as f:
        for r in train + val + lang_train + lang_val:
            f.write(header + "\n\n### Instruction:\n" + r["instruction"] + "\n\n### Response:\n" +
                    r["output"] + "\n")

if __name__ == "__main__":
    main()
