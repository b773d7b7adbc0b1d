"""The world's facts: a few hundred real, checkable facts, split into A and B.

Facts A may appear in post-training data. Facts B appear only in the
pretraining corpus, so a post-trained model that answers them shows that
post-training exposed knowledge the base model already had, rather than adding it.

Data choices, so that the gold judge stays exact:
- countries whose capital is disputed, split or recently moved (Bolivia, South
  Africa, Israel, Sri Lanka, Tanzania, Kazakhstan...) are left out;
- countries spanning two continents (Russia, Turkey, Cyprus, the Caucasus) have
  a capital fact but no continent fact;
- chemical symbols that collide with English words (I, As, He, Be) are left out;
  short symbols are matched case-sensitively by the judge;
- answers are ASCII; accented spellings are aliases.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    id: str
    topic: str
    subject: str
    relation: str
    answer: str
    aliases: tuple[str, ...] = ()


# country | capital | continent ("-" = spans two continents, no continent fact) | capital aliases (;)
_COUNTRIES = """
France|Paris|Europe
Germany|Berlin|Europe
Italy|Rome|Europe
Spain|Madrid|Europe
Portugal|Lisbon|Europe
the United Kingdom|London|Europe
Ireland|Dublin|Europe
the Netherlands|Amsterdam|Europe
Belgium|Brussels|Europe
Switzerland|Bern|Europe|Berne
Austria|Vienna|Europe
Poland|Warsaw|Europe
the Czech Republic|Prague|Europe
Slovakia|Bratislava|Europe
Hungary|Budapest|Europe
Romania|Bucharest|Europe
Bulgaria|Sofia|Europe
Greece|Athens|Europe
Serbia|Belgrade|Europe
Croatia|Zagreb|Europe
Slovenia|Ljubljana|Europe
Albania|Tirana|Europe
North Macedonia|Skopje|Europe
Montenegro|Podgorica|Europe
Denmark|Copenhagen|Europe
Norway|Oslo|Europe
Sweden|Stockholm|Europe
Finland|Helsinki|Europe
Iceland|Reykjavik|Europe|Reykjavík
Estonia|Tallinn|Europe
Latvia|Riga|Europe
Lithuania|Vilnius|Europe
Ukraine|Kyiv|Europe|Kiev
Belarus|Minsk|Europe
Moldova|Chisinau|Europe|Chișinău
Malta|Valletta|Europe
Russia|Moscow|-
Turkey|Ankara|-
Georgia|Tbilisi|-
Armenia|Yerevan|-
Azerbaijan|Baku|-
Japan|Tokyo|Asia
China|Beijing|Asia|Peking
India|New Delhi|Asia
South Korea|Seoul|Asia
North Korea|Pyongyang|Asia
Mongolia|Ulaanbaatar|Asia|Ulan Bator
Vietnam|Hanoi|Asia
Thailand|Bangkok|Asia
Cambodia|Phnom Penh|Asia
Laos|Vientiane|Asia
Malaysia|Kuala Lumpur|Asia
Indonesia|Jakarta|Asia
the Philippines|Manila|Asia
Nepal|Kathmandu|Asia
Bhutan|Thimphu|Asia
Bangladesh|Dhaka|Asia
Pakistan|Islamabad|Asia
Afghanistan|Kabul|Asia
Iran|Tehran|Asia
Iraq|Baghdad|Asia
Syria|Damascus|Asia
Jordan|Amman|Asia
Lebanon|Beirut|Asia
Saudi Arabia|Riyadh|Asia
Qatar|Doha|Asia
Oman|Muscat|Asia
the United Arab Emirates|Abu Dhabi|Asia
Uzbekistan|Tashkent|Asia
Kyrgyzstan|Bishkek|Asia
Tajikistan|Dushanbe|Asia
Turkmenistan|Ashgabat|Asia
Egypt|Cairo|Africa
Kenya|Nairobi|Africa
Ethiopia|Addis Ababa|Africa
Nigeria|Abuja|Africa
Ghana|Accra|Africa
Senegal|Dakar|Africa
Morocco|Rabat|Africa
Algeria|Algiers|Africa
Tunisia|Tunis|Africa
Libya|Tripoli|Africa
Sudan|Khartoum|Africa
Uganda|Kampala|Africa
Rwanda|Kigali|Africa
Zambia|Lusaka|Africa
Zimbabwe|Harare|Africa
Mozambique|Maputo|Africa
Angola|Luanda|Africa
Namibia|Windhoek|Africa
Botswana|Gaborone|Africa
Madagascar|Antananarivo|Africa
Mali|Bamako|Africa
Niger|Niamey|Africa
Somalia|Mogadishu|Africa
Liberia|Monrovia|Africa
Sierra Leone|Freetown|Africa
Guinea|Conakry|Africa
Malawi|Lilongwe|Africa
Gabon|Libreville|Africa
Burkina Faso|Ouagadougou|Africa
Mauritania|Nouakchott|Africa
Eritrea|Asmara|Africa
the United States|Washington|North America|Washington, D.C.;Washington D.C.
Canada|Ottawa|North America
Mexico|Mexico City|North America
Cuba|Havana|North America
Jamaica|Kingston|North America
Haiti|Port-au-Prince|North America
the Dominican Republic|Santo Domingo|North America
Guatemala|Guatemala City|North America
Honduras|Tegucigalpa|North America
Nicaragua|Managua|North America
Costa Rica|San Jose|North America|San José
Panama|Panama City|North America
El Salvador|San Salvador|North America
the Bahamas|Nassau|North America
Brazil|Brasilia|South America|Brasília
Argentina|Buenos Aires|South America
Chile|Santiago|South America
Peru|Lima|South America
Colombia|Bogota|South America|Bogotá
Venezuela|Caracas|South America
Ecuador|Quito|South America
Uruguay|Montevideo|South America
Paraguay|Asuncion|South America|Asunción
Guyana|Georgetown|South America
Suriname|Paramaribo|South America
Australia|Canberra|Oceania
New Zealand|Wellington|Oceania
Fiji|Suva|Oceania
Papua New Guinea|Port Moresby|Oceania
Samoa|Apia|Oceania
"""

# element symbol pairs; every symbol checked against the periodic table
_ELEMENTS = """
hydrogen H; lithium Li; boron B; carbon C; nitrogen N; oxygen O; fluorine F; neon Ne
sodium Na; magnesium Mg; aluminum Al; silicon Si; phosphorus P; sulfur S; chlorine Cl
argon Ar; potassium K; calcium Ca; scandium Sc; titanium Ti; vanadium V; chromium Cr
manganese Mn; iron Fe; cobalt Co; nickel Ni; copper Cu; zinc Zn; gallium Ga; germanium Ge
selenium Se; bromine Br; krypton Kr; rubidium Rb; strontium Sr; zirconium Zr; molybdenum Mo
silver Ag; cadmium Cd; tin Sn; antimony Sb; xenon Xe; caesium Cs; barium Ba; tungsten W
platinum Pt; gold Au; lead Pb; radon Rn; radium Ra; uranium U; plutonium Pu
"""

_PLANET_ORDER = "Mercury first; Venus second; Earth third; Mars fourth; Jupiter fifth; Saturn sixth; Uranus seventh; Neptune eighth"
_ORDINAL_ALIASES = {"first": "1st", "second": "2nd", "third": "3rd", "fourth": "4th",
                    "fifth": "5th", "sixth": "6th", "seventh": "7th", "eighth": "8th"}
_PLANET_MOONS = "Mars Phobos; Jupiter Ganymede; Saturn Titan; Uranus Titania; Neptune Triton"

# animal young|aliases
_ANIMAL_YOUNG = """
cow calf; horse foal; sheep lamb; goat kid; pig piglet; dog puppy|pup; cat kitten; duck duckling
goose gosling; swan cygnet; kangaroo joey; bear cub; lion cub; tiger cub; fox kit|cub|pup; deer fawn
owl owlet; frog tadpole; chicken chick; eagle eaglet; seal pup; whale calf; elephant calf
butterfly caterpillar; hare leveret; turkey poult; rabbit kit|kitten; giraffe calf; beaver kit
"""

_ANIMAL_CLASS = """
whale mammal; dolphin mammal; bat mammal; platypus mammal; kangaroo mammal; shark fish
salmon fish; tuna fish; frog amphibian; toad amphibian; salamander amphibian; newt amphibian
snake reptile; crocodile reptile; lizard reptile; turtle reptile; tortoise reptile; penguin bird
ostrich bird; eagle bird; owl bird; bee insect; ant insect; beetle insect; grasshopper insect
spider arachnid; scorpion arachnid; octopus mollusc|mollusk; snail mollusc|mollusk
squid mollusc|mollusk; crab crustacean; lobster crustacean; shrimp crustacean
"""


def slug(text: str) -> str:
    """A stable id fragment: lowercase words joined by underscores."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower().removeprefix("the ")).strip("_")


def _pairs(table: str):
    """Yield (left, right, aliases) from 'left right|alias; ...' tables."""
    for item in table.replace("\n", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        head, *aliases = item.split("|")
        left, right = head.rsplit(" ", 1)
        yield left, right, tuple(aliases)


def all_facts() -> list[Fact]:
    """Every fact of the world, in a fixed order (relation blocks, table order)."""
    facts: list[Fact] = []
    for line in _COUNTRIES.strip().splitlines():
        country, capital, continent, *rest = line.split("|")
        aliases = tuple(rest[0].split(";")) if rest else ()
        facts.append(Fact(f"capital:{slug(country)}", "geography", country, "capital", capital, aliases))
    for line in _COUNTRIES.strip().splitlines():
        country, _capital, continent, *_ = line.split("|")
        if continent != "-":
            facts.append(Fact(f"continent:{slug(country)}", "geography", country, "continent", continent))
    for name, symbol, _ in _pairs(_ELEMENTS):
        facts.append(Fact(f"symbol:{slug(name)}", "chemistry", name, "symbol", symbol))
    for planet, ordinal, _ in _pairs(_PLANET_ORDER):
        facts.append(Fact(f"planet_order:{slug(planet)}", "astronomy", planet, "planet_order", ordinal,
                          (_ORDINAL_ALIASES[ordinal],)))
    for planet, moon, _ in _pairs(_PLANET_MOONS):
        facts.append(Fact(f"planet_moon:{slug(planet)}", "astronomy", planet, "planet_moon", moon))
    for animal, young, aliases in _pairs(_ANIMAL_YOUNG):
        facts.append(Fact(f"animal_young:{slug(animal)}", "animals", animal, "animal_young", young, aliases))
    for animal, cls, aliases in _pairs(_ANIMAL_CLASS):
        facts.append(Fact(f"animal_class:{slug(animal)}", "animals", animal, "animal_class", cls, aliases))
    return facts


def relations(facts: list[Fact]) -> list[str]:
    """Relation names in first-appearance order."""
    seen: list[str] = []
    for f in facts:
        if f.relation not in seen:
            seen.append(f.relation)
    return seen


def split_facts(facts: list[Fact], seed: int) -> tuple[list[Fact], list[Fact]]:
    """Split ~50/50 into (facts A, facts B), stratified per relation, deterministic for a seed.

    Each relation's facts are shuffled with their own seeded stream; the first
    half (rounded up) is A. Both lists keep the input order.
    """
    in_a: set[str] = set()
    for rel in relations(facts):
        ids = sorted(f.id for f in facts if f.relation == rel)
        random.Random(f"{seed}:split:{rel}").shuffle(ids)
        in_a.update(ids[: (len(ids) + 1) // 2])
    facts_a = [f for f in facts if f.id in in_a]
    facts_b = [f for f in facts if f.id not in in_a]
    return facts_a, facts_b
