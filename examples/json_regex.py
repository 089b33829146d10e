"""Structured extraction: regex- and JSON-schema-constrained generation.

    python examples/json_regex.py [--backend URL]
"""
import json

from common import setup

import sgl

CHARACTER_REGEX = (
    r"""\{\n"""
    r"""    "name": "[\w\d\s]{1,16}",\n"""
    r"""    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n"""
    r"""    "wand": \{\n"""
    r"""        "wood": "[\w\d\s]{1,16}",\n"""
    r"""        "length": [0-9]{1,2}\.[0-9]{0,2}\n"""
    r"""    \},\n"""
    r"""    "alive": "(Alive|Deceased)"\n"""
    r"""\}"""
)

CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20},
                   "country": {"type": "string", "maxLength": 20},
                   "population_millions": {"type": "integer"}},
    "required": ["name", "country", "population_millions"],
}


@sgl.function
def character_gen(s, name):
    s += name + " is a character in Harry Potter. Please fill in the following information about this character.\n"
    s += sgl.gen("json_output", max_tokens=128, regex=CHARACTER_REGEX)


@sgl.function
def city_info(s, city):
    s += "Give facts about " + city + " as JSON.\n"
    s += sgl.gen("json_output", max_tokens=64, json_schema=CITY_SCHEMA)
    s += "\nFounded in year: " + sgl.gen_int("year", max_tokens=6)


if __name__ == "__main__":
    setup(__doc__)
    state = character_gen.run(name="Hermione Granger", temperature=0)
    print(state["json_output"])
    state = city_info.run(city="Paris", temperature=0)
    try:
        print(json.loads(state["json_output"]), "founded:", state["year"])
    except json.JSONDecodeError:
        print("not JSON (is the runtime's grammar backend enabled?):", state["json_output"])
