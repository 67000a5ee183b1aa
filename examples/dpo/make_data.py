"""Writes examples/dpo/data.json: preference pairs for DPO in one consistent style, an answer that names
its source (chosen) against the same answer hedged without one (rejected), as {"train": [...], "val": [...]}.

Five topics of twenty facts, each topic with its own source; the last four facts of every topic are held
out (`val`), so validation asks about facts the run never trained on, in a style it did.

    python examples/dpo/make_data.py
"""

import json
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasilia", "India": "New Delhi",
    "China": "Beijing", "Russia": "Moscow", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Sweden": "Stockholm", "Greece": "Athens", "Portugal": "Lisbon", "Poland": "Warsaw", "Ireland": "Dublin",
}  # fmt: skip
SYMBOLS = {
    "gold": "Au", "silver": "Ag", "iron": "Fe", "copper": "Cu", "sodium": "Na", "potassium": "K",
    "lead": "Pb", "tin": "Sn", "mercury": "Hg", "oxygen": "O", "hydrogen": "H", "carbon": "C",
    "nitrogen": "N", "helium": "He", "neon": "Ne", "calcium": "Ca", "zinc": "Zn", "sulfur": "S",
    "chlorine": "Cl", "uranium": "U",
}  # fmt: skip
AUTHORS = {
    "Pride and Prejudice": "Jane Austen", "Hamlet": "William Shakespeare", "War and Peace": "Leo Tolstoy",
    "Don Quixote": "Miguel de Cervantes", "Moby-Dick": "Herman Melville", "1984": "George Orwell",
    "The Odyssey": "Homer", "Great Expectations": "Charles Dickens", "Crime and Punishment":
    "Fyodor Dostoevsky", "The Divine Comedy": "Dante Alighieri", "Frankenstein": "Mary Shelley",
    "Ulysses": "James Joyce", "Madame Bovary": "Gustave Flaubert", "The Trial": "Franz Kafka",
    "Les Miserables": "Victor Hugo", "Faust": "Johann Wolfgang von Goethe", "Jane Eyre": "Charlotte Bronte",
    "Dracula": "Bram Stoker", "The Raven": "Edgar Allan Poe", "Beloved": "Toni Morrison",
}  # fmt: skip
PLANETS = [
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    (
        "Which planet is the largest in the Solar System?",
        "Jupiter is the largest planet in the Solar System.",
    ),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("Which planet has the most famous rings?", "Saturn has the most famous rings."),
    ("Which planet is the hottest in the Solar System?", "Venus is the hottest planet in the Solar System."),
    ("Which planet is farthest from the Sun?", "Neptune is the planet farthest from the Sun."),
    ("Which planet rotates on its side?", "Uranus rotates on its side."),
    ("How many planets are in the Solar System?", "There are eight planets in the Solar System."),
    ("What is the largest moon of Saturn?", "Titan is the largest moon of Saturn."),
    ("What is the largest moon of Jupiter?", "Ganymede is the largest moon of Jupiter."),
    ("What is the name of Earth's natural satellite?", "Earth's natural satellite is the Moon."),
    ("How long does Earth take to orbit the Sun?", "Earth takes about 365 days to orbit the Sun."),
    (
        "What star is at the center of the Solar System?",
        "The Sun is the star at the center of the Solar System.",
    ),
    ("Which dwarf planet was once the ninth planet?", "Pluto was once counted as the ninth planet."),
    ("What are the two moons of Mars called?", "The two moons of Mars are Phobos and Deimos."),
    ("Which planet has the Great Red Spot?", "Jupiter has the Great Red Spot."),
    (
        "Which planet is the smallest in the Solar System?",
        "Mercury is the smallest planet in the Solar System.",
    ),
    ("Which planet is the third from the Sun?", "Earth is the third planet from the Sun."),
    ("Where is the asteroid belt?", "The asteroid belt lies between Mars and Jupiter."),
    ("Which planet has the largest volcano?", "Mars has the largest volcano, Olympus Mons."),
]
UNITS = [
    ("How many grams are in a kilogram?", "There are 1000 grams in a kilogram."),
    ("How many meters are in a kilometer?", "There are 1000 meters in a kilometer."),
    ("How many centimeters are in a meter?", "There are 100 centimeters in a meter."),
    ("How many millimeters are in a centimeter?", "There are 10 millimeters in a centimeter."),
    ("How many milliliters are in a liter?", "There are 1000 milliliters in a liter."),
    ("How many seconds are in a minute?", "There are 60 seconds in a minute."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("How many seconds are in an hour?", "There are 3600 seconds in an hour."),
    ("What is the SI unit of force?", "The SI unit of force is the newton."),
    ("What is the SI unit of energy?", "The SI unit of energy is the joule."),
    ("What is the SI unit of power?", "The SI unit of power is the watt."),
    ("What is the SI unit of electric current?", "The SI unit of electric current is the ampere."),
    ("What is the SI unit of temperature?", "The SI unit of temperature is the kelvin."),
    ("What is the SI unit of pressure?", "The SI unit of pressure is the pascal."),
    ("What is the SI unit of frequency?", "The SI unit of frequency is the hertz."),
    ("What is the SI unit of mass?", "The SI unit of mass is the kilogram."),
    ("What is the SI unit of length?", "The SI unit of length is the meter."),
    ("What is the SI unit of time?", "The SI unit of time is the second."),
    ("What is the SI unit of electric charge?", "The SI unit of electric charge is the coulomb."),
    ("What is the SI unit of voltage?", "The SI unit of voltage is the volt."),
]
TOPICS = [
    (
        "CIA World Factbook",
        [(f"What is the capital of {c}?", f"The capital of {c} is {city}.") for c, city in CAPITALS.items()],
    ),
    (
        "IUPAC Periodic Table",
        [
            (f"What is the chemical symbol for {e}?", f"The chemical symbol for {e} is {s}.")
            for e, s in SYMBOLS.items()
        ],
    ),
    (
        "Encyclopaedia Britannica",
        [(f"Who wrote {book}?", f"{book} was written by {who}.") for book, who in AUTHORS.items()],
    ),
    ("NASA Solar System Exploration", PLANETS),
    ("BIPM SI Brochure", UNITS),
]
HELD_OUT = 4  # per topic


def pair(question: str, answer: str, source: str) -> dict[str, str]:
    """The same answer twice: citing its source (chosen), or hedged without one (rejected)."""
    return {
        "prompt": question,
        "chosen": f"{answer} Source: {source}.",
        "rejected": f"{answer[:-1]}, I think.",
    }


def main() -> None:
    train, val = [], []
    for source, facts in TOPICS:
        assert len(facts) == 20, source
        pairs = [pair(q, a, source) for q, a in facts]
        train += pairs[:-HELD_OUT]
        val += pairs[-HELD_OUT:]
    out = Path(__file__).with_name("data.json")
    out.write_text(json.dumps({"train": train, "val": val}, indent=1) + "\n")
    print(f"wrote {out}: {len(train)} train and {len(val)} val pairs")


if __name__ == "__main__":
    main()
