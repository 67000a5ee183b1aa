"""Writes examples/sft/data.json: short factual questions with one consistent answer style (a full
sentence that restates the question), in the seed's SFT format {"train": [...], "test": [...]}.

    python examples/sft/make_data.py
"""

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Brazil": "Brasilia",
    "India": "New Delhi",
    "China": "Beijing",
    "Russia": "Moscow",
    "Mexico": "Mexico City",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Poland": "Warsaw",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Chile": "Santiago",
    "Turkey": "Ankara",
    "Thailand": "Bangkok",
}
PLURALS = {
    "mouse": "mice",
    "child": "children",
    "tooth": "teeth",
    "foot": "feet",
    "goose": "geese",
    "man": "men",
    "woman": "women",
    "person": "people",
    "leaf": "leaves",
    "knife": "knives",
    "wolf": "wolves",
    "box": "boxes",
    "city": "cities",
    "baby": "babies",
    "bus": "buses",
    "fish": "fish",
    "sheep": "sheep",
    "cactus": "cacti",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "happy": "sad",
    "light": "dark",
    "early": "late",
    "full": "empty",
    "open": "closed",
    "strong": "weak",
    "rich": "poor",
    "young": "old",
    "hard": "soft",
    "loud": "quiet",
    "wet": "dry",
    "high": "low",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def pairs(rng: random.Random) -> list[dict[str, str]]:
    out = []
    for country, city in CAPITALS.items():
        out.append((f"What is the capital of {country}?", f"The capital of {country} is {city}."))
    for word, plural in PLURALS.items():
        out.append((f"What is the plural of {word}?", f"The plural of {word} is {plural}."))
    for word, opposite in OPPOSITES.items():
        out.append((f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."))
    for i, day in enumerate(DAYS):
        out.append((f"What day comes after {day}?", f"The day after {day} is {DAYS[(i + 1) % 7]}."))
    for _ in range(70):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        out.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    for _ in range(30):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        out.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
    for i in range(25):
        letter, following = chr(ord("A") + i), chr(ord("A") + i + 1)
        out.append((f"Which letter comes after {letter}?", f"The letter after {letter} is {following}."))
    for _ in range(40):
        m = rng.randint(2, 40)
        out.append(
            (f"How many centimeters are in {m} meters?", f"There are {m * 100} centimeters in {m} meters.")
        )
    seen, unique = set(), []
    for q, a in out:
        if q not in seen:
            seen.add(q)
            unique.append({"Question": q, "Answer": a})
    return unique


def main() -> None:
    rng = random.Random(0)
    rows = pairs(rng)
    rng.shuffle(rows)
    n_test = 45
    data = {"train": rows[n_test:], "test": rows[:n_test]}
    path = Path(__file__).with_name("data.json")
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{path}: {len(data['train'])} train, {len(data['test'])} test")


if __name__ == "__main__":
    main()
