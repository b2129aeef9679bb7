"""Realistic demo interaction logs in the raw log contract, written into the inbox."""

from __future__ import annotations

import gzip
import json
import random
import string
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

from ft_pipeline.client import assign_variant
from ft_pipeline.core.io import atomic_path

TASK_SHARES = {"customer_support": 0.32, "sql_generation": 0.24, "game_master": 0.2, "character_chat": 0.24}
TASKS = list(TASK_SHARES)
REGRESSION_DAYS = 7
PENDING_SHARE = 0.07
ATTEMPT_WEIGHTS = (0.75, 0.18, 0.07)
# later attempts follow a failed quality check with a better prompt, so they are accepted more often
ATTEMPT_BONUS = 0.08
USERS = 500
FILES = 4


@dataclass(frozen=True)
class Agent:
    """An agent or character of the demo product and how reviewers treat its answers."""

    name: str
    task: str
    share: float  # of its task's traffic
    accept: float  # accepted share of reviewed first attempts (an experiment's arms override it)
    reject: float  # rejected share of reviewed records; the rest is edited
    model: str
    adapter_version: str | None
    reasoning_mode: str
    latency_ms: float
    system_prompt: str


SQL_SCHEMA = (
    "customers(id, name, email, country, created_at); orders(id, customer_id, total, status, created_at); "
    "products(id, name, category, price, stock); employees(id, name, department, salary, hired_at)"
)

AGENTS = [
    Agent(
        "support-bot",
        "customer_support",
        0.6,
        0.55,
        0.08,
        "llama-3.1-8b-instruct",
        "5",
        "standard",
        650.0,
        "You are the support assistant of Northwind Shop. Solve the customer's problem in one short reply.",
    ),
    Agent(
        "billing-bot",
        "customer_support",
        0.4,
        0.62,
        0.07,
        "llama-3.1-8b-instruct",
        "5",
        "agent",
        800.0,
        "You are the billing assistant of Northwind Shop. You can issue refunds. Be brief and concrete.",
    ),
    Agent(
        "sql-helper",
        "sql_generation",
        1.0,
        0.6,
        0.09,
        "qwen2.5-coder-7b",
        "7",
        "chain_of_thought",
        450.0,
        f"You translate questions into SQLite queries. Answer with one SQL statement. Schema: {SQL_SCHEMA}",
    ),
    Agent(
        "dungeon-master",
        "game_master",
        0.65,
        0.56,
        0.08,
        "mistral-7b-instruct",
        None,
        "multi_step",
        900.0,
        "You are the narrator of a fantasy adventure. Describe what happens in two or three sentences.",
    ),
    Agent(
        "star-narrator",
        "game_master",
        0.35,
        0.58,
        0.08,
        "mistral-7b-instruct",
        None,
        "multi_step",
        900.0,
        "You are the narrator of a science-fiction adventure. Describe what happens in two or three sentences.",
    ),
    Agent(
        "The Entrepreneur",
        "character_chat",
        0.4,
        0.6,
        0.08,
        "llama-3.1-8b-instruct",
        "2",
        "standard",
        700.0,
        "You are The Entrepreneur: confident, practical, always pushing people to act.",
    ),
    Agent(
        "peter",
        "character_chat",
        0.45,
        0.62,
        0.07,
        "llama-3.1-8b-instruct",
        "2",
        "standard",
        700.0,
        "You are Peter: a friendly, clumsy guy who shares funny personal stories.",
    ),
    Agent(
        "Captain Mira",
        "character_chat",
        0.15,
        0.6,
        0.08,
        "llama-3.1-8b-instruct",
        "2",
        "standard",
        700.0,
        "You are Captain Mira, an old sea captain who talks like a sailor.",
    ),
]
AGENTS_BY_TASK = {task: [a for a in AGENTS if a.task == task] for task in TASK_SHARES}
# cumulative weights computed once: random.choices with cum_weights skips re-summing on every record
TASK_CUM = list(accumulate(TASK_SHARES.values()))
AGENT_CUM = {task: list(accumulate(a.share for a in agents)) for task, agents in AGENTS_BY_TASK.items()}
ATTEMPT_CUM = list(accumulate(ATTEMPT_WEIGHTS))

# planted: acceptance of this agent falls in the last days, after a canary of a new adapter version went out to it
# (adapter versions are per task and distinct across tasks here, so each adapter_version names one adapter)
REGRESSION_AGENT, REGRESSION_ADAPTER, REGRESSION_ACCEPT_DROP, REGRESSION_REJECT_RISE = "peter", "3", 0.27, 0.08
# planted: an A/B test with a real difference and one without
EXPERIMENTS = {
    "support-bot": (
        "greeting_test",
        {"a": 0.45, "b": 0.65},
        {"a": "Greet the customer formally.", "b": "Greet the customer warmly by first name."},
    ),
    "sql-helper": (
        "sql_prompt_v2",
        {"control": 0.6, "treatment": 0.6},
        {"control": "", "treatment": "Prefer explicit column lists."},
    ),
}
MODEL_PRICES = {
    "llama-3.1-8b-instruct": (2e-7, 6e-7),
    "qwen2.5-coder-7b": (1.5e-7, 4.5e-7),
    "mistral-7b-instruct": (2.5e-7, 7.5e-7),
}
RETRY_REASONS = {
    "customer_support": ["too_formal", "missing_resolution"],
    "sql_generation": ["wrong_sql", "syntax_error"],
    "game_master": ["poor_engagement", "too_short"],
    "character_chat": ["out_of_character", "too_formal", "poor_engagement"],
}

NAMES = ["Jane", "Omar", "Lucia", "Wei", "Priya", "Tom", "Amara", "Jonas", "Sofia", "Kenji", "Fatima", "Liam"]
SURNAMES = ["doe", "haddad", "rossi", "chen", "patel", "baker", "okafor", "berg", "alves", "sato", "khan", "walsh"]
PRODUCTS = [
    "wireless headphones",
    "standing desk",
    "coffee grinder",
    "running shoes",
    "phone case",
    "desk lamp",
    "backpack",
    "air fryer",
]
SUPPORT_ISSUES = {
    "late_delivery": (
        [
            "Hi, my order #{order} for the {product} still hasn't arrived and it's been {n} days. Can you check? Thanks, {name}",
            "Where is my {product}?? Order #{order} was due {n} days ago. - {name}",
            "Hello, this is {name}. Order #{order} ({product}) is {n} days late. What's going on?",
        ],
        "I checked order #{order}: your {product} is delayed at the carrier and will arrive within 2 business days. "
        "I've refunded the shipping fee for the trouble.",
    ),
    "damaged_item": (
        [
            "Hi, the {product} from order #{order} arrived broken. The box was crushed. {name}",
            "This is {name}: my {product} (order #{order}) came damaged, what can you do?",
            "Order #{order}: the {product} is cracked out of the box. Please help. Regards, {name}",
        ],
        "I'm sorry the {product} arrived damaged. I've shipped a free replacement for order #{order} today, "
        "and you can keep or recycle the damaged one.",
    ),
    "password_reset": (
        [
            "Hi, I'm {name} and I can't log in. The password reset email never arrives. My email is {email}.",
            "Password reset isn't working for {email}, please help! - {name}",
            "{name} here. Locked out of my account ({email}), the reset link doesn't come.",
        ],
        "I've sent a new password reset link to {email}. It is valid for 24 hours, so please check your spam folder "
        "if it doesn't show up.",
    ),
    "refund": (
        [
            "I'd like to return the {product} from order #{order} and get a refund. Thanks, {name}",
            "Hi, this is {name}. The {product} (order #{order}) isn't what I expected, can I get my money back?",
            "Refund please for order #{order}, the {product} doesn't work for me. {name}",
        ],
        "I've started a full refund for the {product} on order #{order}. The money will be back on your original "
        "payment method within 5 business days.",
    ),
    "double_charge": (
        [
            "Hi, I was charged twice (${amount}) for order #{order}. Please fix it. {name}",
            "{name} here: my card shows two charges of ${amount} for order #{order}.",
            "Why was I billed ${amount} twice for order #{order}? - {name}",
        ],
        "I checked order #{order} and found the duplicate charge of ${amount}. I've refunded it, and it will show on "
        "your statement within 3 business days.",
    ),
}
AGENT_ISSUES = {"support-bot": ["late_delivery", "damaged_item", "password_reset"], "billing-bot": ["refund", "double_charge"]}
SUPPORT_CLOSING = {"support-bot": "Have a great day!", "billing-bot": "Let me know if you need anything else."}
# planted edit habits: editors delete this phrase from support-bot answers, and add the closing to billing-bot's
AI_DISCLAIMER = "As an AI language model,"
FORMAL_OPENING = "Dear {name}, we apologize for any inconvenience caused."

SQL_TABLES = {
    "customers": (
        "customers",
        [("names and emails", "name, email"), ("names and countries", "name, country"), ("ids and names", "id, name")],
        ("from {v}", "country", ["France", "Germany", "Japan", "Brazil", "Canada", "India", "Spain", "Kenya"]),
        [],
    ),
    "orders": (
        "orders",
        [("ids and totals", "id, total"), ("ids and statuses", "id, status"), ("customer ids and totals", "customer_id, total")],
        ("with status {v}", "status", ["shipped", "pending", "cancelled", "delivered", "returned"]),
        [("total", "total", [50, 100, 250, 500, 1000])],
    ),
    "products": (
        "products",
        [("names and prices", "name, price"), ("names and stock levels", "name, stock")],
        ("in the {v} category", "category", ["books", "toys", "garden", "electronics", "sports", "kitchen"]),
        [("price", "price", [10, 25, 50, 100]), ("stock", "stock", [5, 10, 20, 100])],
    ),
    "employees": (
        "employees",
        [("names and salaries", "name, salary"), ("names and departments", "name, department")],
        ("in the {v} department", "department", ["sales", "engineering", "support", "finance", "marketing", "legal"]),
        [("salary", "salary", [50000, 65000, 80000, 120000])],
    ),
}
SQL_PROMPTS = {
    "list": [
        "List the {cols_nl} of {entity} {filter_nl}.",
        "Show me the {cols_nl} of all {entity} {filter_nl}.",
        "I need the {cols_nl} of {entity} {filter_nl}.",
    ],
    "count": [
        "How many {entity} {filter_nl} are there?",
        "Count the {entity} {filter_nl}.",
        "What is the number of {entity} {filter_nl}?",
    ],
    "above": [
        "Which {entity} have a {num_nl} above {n}? Give me their {cols_nl}.",
        "Find the {cols_nl} of {entity} with {num_nl} over {n}.",
        "Show the {cols_nl} of {entity} whose {num_nl} is greater than {n}.",
    ],
    "top": [
        "What are the top {k} {entity} by {num_nl}? Show their {cols_nl}.",
        "Give me the {cols_nl} of the {k} {entity} with the highest {num_nl}.",
        "List the {cols_nl} of the {k} {entity} with the largest {num_nl}.",
    ],
}

GENRES = {
    "dungeon-master": (
        "fantasy",
        ["the old crypt", "the village tavern", "the forest shrine", "the castle gate"],
        ["the wooden chest", "the rusty lever", "the strange map", "the iron door"],
        "The air is thick with ancient mystery and untold secrets.",
    ),
    "star-narrator": (
        "sci-fi",
        ["the cargo bay", "the bridge", "the reactor room", "the airlock"],
        ["the control panel", "the supply crate", "the flickering terminal", "the sealed hatch"],
        "The cold void of space whispers of infinite possibilities.",
    ),
}
ACTIONS = {
    "open": ("opened", "It swings open and reveals a narrow passage leading down."),
    "search": ("searched", "You find a small silver key hidden underneath."),
    "push": ("pushed", "Something clicks deep inside the wall, and a hidden door slides aside."),
    "examine": ("examined", "Faint markings glow along its edge, forming an arrow that points north."),
}
GM_PROMPTS = [
    "I {action} {object} in {place}.",
    "I want to {action} {object} in {place}.",
    "Let me {action} {object} in {place} carefully.",
    "{Action} {object} in {place}!",
]
NEXT = "What do you do next?"

TOPICS = {
    "business": [
        "starting a side business",
        "raising my prices",
        "hiring my first employee",
        "quitting my job",
        "opening a coffee shop",
    ],
    "fitness": [
        "running a marathon",
        "lifting weights",
        "a morning workout routine",
        "joining a climbing gym",
        "cycling to work",
    ],
    "travel": [
        "a trip to Japan",
        "backpacking in Europe",
        "travelling on a budget",
        "a road trip with friends",
        "living abroad for a year",
    ],
    "food": ["learning to cook", "baking sourdough", "eating healthier", "going vegetarian", "hosting a dinner party"],
    "technology": ["learning to code", "buying a new laptop", "building a website", "building a gaming PC", "switching to Linux"],
    "music": ["learning the guitar", "starting a band", "writing my first song", "taking singing lessons", "learning to DJ"],
}
CHAT_PROMPTS = [
    "What do you think about {thing}?",
    "Any advice on {thing}?",
    "I'm thinking about {thing}. Thoughts?",
    "Be honest: is {thing} a good idea?",
    "What's your take on {thing}?",
    "My friend says {thing} is a waste of time. Is it?",
]
CHARACTER_LINES = {
    "The Entrepreneur": {
        "business": "charge for value, not for hours",
        "fitness": "treat your energy like capital",
        "travel": "plan the budget before the route",
        "food": "invest in the basics first",
        "technology": "ship something small every week",
        "music": "find your first ten fans",
    },
    "peter": {
        "business": "my lemonade stand taught me everything",
        "fitness": "I tried it once and my legs still hurt",
        "travel": "I got lost twice and loved it",
        "food": "I burned the first three tries",
        "technology": "I broke my laptop doing that",
        "music": "my neighbours were not fans at first",
    },
    "Captain Mira": {
        "business": "A good trade is like a fair wind",
        "fitness": "Hauling rope built these arms",
        "travel": "Every harbour teaches you something",
        "food": "Nothing beats fish cooked on deck",
        "technology": "A good compass never needs charging",
        "music": "Sea shanties kept my crew alive",
    },
}
CHARACTER_GREETINGS = {
    "The Entrepreneur": "Let's get to work. What are we building today?",
    "peter": "Hey hey! Good to see you again.",
    "Captain Mira": "Ahoy there, sailor!",
}
BUZZWORDS = "In today's fast-paced world,"


def _luhn_card(rng: random.Random) -> str:
    """A 16-digit Visa-like number that passes the Luhn check, grouped by four."""
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        # the check digit is appended, so the digits that get doubled are at even offsets from the right here
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i : i + 4] for i in range(0, 16, 4))


def _phone(rng: random.Random) -> str:
    """A US phone number in the 555 range."""
    return f"+1 415-555-{rng.randrange(100, 200):04d}"


def _secret(rng: random.Random) -> str:
    """An API key in the sk- style."""
    return "sk-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))


@dataclass
class Texts:
    """The texts of one interaction: what the user asked, the approved answer and the model's flawed variants."""

    prompt: str
    final: str
    edited: str
    edit_reasons: list[str]
    rejected: str
    reject_reasons: list[str]
    messages: list[dict] | None = None
    topic: str | None = None
    metadata: dict | None = None


def _support(rng: random.Random, agent: Agent) -> Texts:
    issue = rng.choice(AGENT_ISSUES[agent.name])
    prompts, resolution = SUPPORT_ISSUES[issue]
    first = rng.randrange(len(NAMES))
    slots = {
        "name": NAMES[first],
        "order": rng.randrange(10000, 99999),
        "product": rng.choice(PRODUCTS),
        "n": rng.randrange(3, 15),
        "amount": f"{rng.randrange(15, 400)}.{rng.randrange(100):02d}",
        "email": f"{NAMES[first].lower()}.{rng.choice(SURNAMES)}@example.com",
    }
    prompt = rng.choice(prompts).format(**slots)
    extra = rng.random()
    if extra < 0.05:
        prompt += f" You can also call me at {_phone(rng)}."
    elif extra < 0.07 and issue == "double_charge":
        prompt += f" The card is {_luhn_card(rng)}."
    elif extra < 0.2 and issue == "password_reset":
        prompt += (
            f" I'm logging in from {rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}."
        )
    hello, body, closing = (
        f"Hi {slots['name']}, thanks for reaching out.",
        resolution.format(**slots),
        SUPPORT_CLOSING[agent.name],
    )
    final = f"{hello} {body} {closing}"
    habit = rng.random() < (0.8 if agent.name == "support-bot" else 0.85)
    if habit and agent.name == "support-bot":
        edited, reasons = f"{hello} {AI_DISCLAIMER} {body} {closing}", ["robotic_tone"]
    elif habit:
        edited, reasons = f"{hello} {body}", ["missing_closing"]
    else:
        edited, reasons = f"{FORMAL_OPENING.format(**slots)} {body} {closing}", ["too_formal"]
    if rng.random() < 0.5:
        rejected = "I'm sorry, I can't help with account or order questions. Please contact support."
    else:
        rejected = f"{hello} I have escalated your ticket to the right team. {closing}"
    messages = None
    if rng.random() < 0.2:
        messages = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi! How can I help you today?"}]
    return Texts(
        prompt,
        final,
        edited,
        reasons,
        rejected,
        ["missing_resolution"],
        messages,
        issue,
        {"channel": rng.choice(["web", "email", "app"]), "ticket_id": f"T-{rng.randrange(100000, 999999)}"},
    )


def _sql(rng: random.Random, agent: Agent) -> Texts:
    table = rng.choice(list(SQL_TABLES))
    entity, columns, (filter_nl, column, values), numerics = SQL_TABLES[table]
    cols_nl, cols = rng.choice(columns)
    kind = rng.choice(["list", "count", "above", "top"] if numerics else ["list", "count"])
    value = rng.choice(values)
    slots = {"entity": entity, "cols_nl": cols_nl, "filter_nl": filter_nl.format(v=value), "k": rng.choice([3, 5, 10])}
    if kind in ("above", "top"):
        num_nl, num_col, thresholds = rng.choice(numerics)
        slots.update(num_nl=num_nl, n=rng.choice(thresholds))
    if kind == "list":
        final = f"SELECT {cols} FROM {table} WHERE {column} = '{value}';"
    elif kind == "count":
        final = f"SELECT COUNT(*) FROM {table} WHERE {column} = '{value}';"
    elif kind == "above":
        final = f"SELECT {cols} FROM {table} WHERE {num_col} > {slots['n']};"
    else:
        final = f"SELECT {cols} FROM {table} ORDER BY {num_col} DESC LIMIT {slots['k']};"
    prompt = rng.choice(SQL_PROMPTS[kind]).format(**slots)
    if rng.random() < 0.02:
        prompt += f" My API key is {_secret(rng)} if you need it."
    style = rng.random()
    if style < 0.5 and kind != "count":
        edited, reasons = final.replace(cols, "*", 1), ["select_star"]
    elif style < 0.8:
        edited, reasons = final.replace("SELECT", "select").replace(" FROM ", " from ").replace(" WHERE ", " where "), ["style"]
    else:
        edited, reasons = final + "\nThis query returns the rows you asked for.", ["extra_text"]
    wrong = rng.choice([t for t in SQL_TABLES if t != table])
    rejected = final.replace(f"FROM {table}", f"FROM {wrong}")
    messages = None
    if rng.random() < 0.25:
        messages = [
            {"role": "user", "content": "Which tables do we have?"},
            {"role": "assistant", "content": "customers, orders, products and employees."},
        ]
    return Texts(prompt, final, edited, reasons, rejected, ["wrong_sql"], messages, None, {"dialect": "sqlite", "channel": "ide"})


def _game(rng: random.Random, agent: Agent) -> Texts:
    genre, places, objects, purple = GENRES[agent.name]
    action = rng.choice(list(ACTIONS))
    past, outcome = ACTIONS[action]
    place, obj = rng.choice(places), rng.choice(objects)
    prompt = rng.choice(GM_PROMPTS).format(action=action, Action=action.capitalize(), object=obj, place=place)
    first = f"You {past} {obj} in {place}."
    final = f"{first} {outcome} {NEXT}"
    if rng.random() < 0.55:
        edited, reasons = f"{first} {outcome}", ["poor_engagement"]
    else:
        edited, reasons = f"{first} {purple} {outcome} {NEXT}", ["too_verbose"]
    messages = None
    if rng.random() < 0.5:
        messages = [
            {"role": "user", "content": f"I look around {place}."},
            {"role": "assistant", "content": f"You are in {place}. It is quiet, and {obj} catches your eye. {NEXT}"},
        ]
    return Texts(
        prompt,
        final,
        edited,
        reasons,
        f"You {past} {obj}. Nothing happens.",
        ["poor_engagement", "too_short"],
        messages,
        None,
        {"genre": genre, "campaign": f"c-{rng.randrange(1, 40)}"},
    )


def _chat(rng: random.Random, agent: Agent) -> Texts:
    topic = rng.choice(list(TOPICS))
    thing = rng.choice(TOPICS[topic])
    line = CHARACTER_LINES[agent.name][topic]
    prompt = rng.choice(CHAT_PROMPTS).format(thing=thing)
    if agent.name == "The Entrepreneur":
        final = (
            f"Great question. With {thing}, my rule is simple: {line}. Start small, measure everything, and decide within a week."
        )
        if rng.random() < 0.75:
            edited, reasons = final.replace("Great question.", f"Great question. {BUZZWORDS}", 1), ["too_generic"]
        else:
            edited, reasons = final.replace(" Start small", " It is advisable to start small", 1), ["too_formal"]
    elif agent.name == "peter":
        final = f"Oh, {thing}? Nice! Honestly, {line}. Want to hear how it went for me?"
        if rng.random() < 0.7:
            edited, reasons = f"Greetings. Regarding {thing}, honestly, {line}. Want to hear how it went for me?", ["too_formal"]
        else:
            edited, reasons = f"Oh, {thing}? Nice! Honestly, {line}.", ["poor_engagement"]
    else:
        final = f"Aye, {thing}. {line}. Keep your bearings and sail on, friend."
        edited, reasons = f"{thing[0].upper()}{thing[1:]} is a good idea. {line}.", ["out_of_character"]
    messages = None
    if rng.random() < 0.4:
        messages = [
            {"role": "user", "content": f"Hey {agent.name}!"},
            {"role": "assistant", "content": CHARACTER_GREETINGS[agent.name]},
        ]
    rejected = f"As an AI, I don't have personal opinions about {thing}."
    return Texts(
        prompt,
        final,
        edited,
        reasons,
        rejected,
        ["out_of_character"],
        messages,
        topic,
        {"character_id": agent.name.lower().replace(" ", "_"), "channel_id": f"ch-{rng.randrange(1, 20)}"},
    )


BUILDERS = {"customer_support": _support, "sql_generation": _sql, "game_master": _game, "character_chat": _chat}


def _words(text: str) -> int:
    """Words in a text, for rough token counts."""
    return text.count(" ") + 1


def _record(rng: random.Random, when: datetime, recent: bool) -> dict[str, Any]:
    """One interaction: the task, agent, texts, what the reviewer did and the serving metrics."""
    task = rng.choices(TASKS, cum_weights=TASK_CUM)[0]
    agent = rng.choices(AGENTS_BY_TASK[task], cum_weights=AGENT_CUM[task])[0]
    texts = BUILDERS[task](rng, agent)
    user_id = f"user-{rng.randrange(USERS):04d}"
    accept, reject, adapter, system = agent.accept, agent.reject, agent.adapter_version, agent.system_prompt
    experiment = variant = None
    if agent.name in EXPERIMENTS:
        experiment, rates, prompts = EXPERIMENTS[agent.name]
        variant = assign_variant(experiment, user_id, list(rates))
        accept = rates[variant]
        system = f"{system} {prompts[variant]}".rstrip()
    if recent and agent.name == REGRESSION_AGENT:
        accept, reject, adapter = accept - REGRESSION_ACCEPT_DROP, reject + REGRESSION_REJECT_RISE, REGRESSION_ADAPTER
    attempt = rng.choices((1, 2, 3), cum_weights=ATTEMPT_CUM)[0]
    accept = min(0.95, accept + ATTEMPT_BONUS * (attempt - 1))
    reasons = [rng.choice(RETRY_REASONS[task]) for _ in range(attempt - 1)]

    if rng.random() < PENDING_SHARE:
        decision = "pending"
    else:
        u = rng.random()
        decision = "accepted" if u < accept else "rejected" if u < accept + reject else "edited"
    quality = user_rating = final_output = None
    if decision == "accepted":
        output = texts.final
        # some apps send the approved text back even when unchanged; absent means approved as is
        final_output = output if rng.random() < 0.3 else None
        quality = rng.uniform(7, 10) if rng.random() < 0.88 else rng.uniform(4, 7)
        confidence = rng.uniform(0.7, 0.99) if rng.random() < 0.9 else rng.uniform(0.5, 0.7)
        if rng.random() < 0.45:
            user_rating = rng.choice((4, 5, 5)) if rng.random() < 0.9 else 3
    elif decision == "edited":
        output, final_output = texts.edited, texts.final
        reasons += texts.edit_reasons
        quality = rng.uniform(6.5, 9.5)
        confidence = rng.uniform(0.6, 0.95)
        if rng.random() < 0.45:
            user_rating = rng.choice((3, 4, 5))
    elif decision == "rejected":
        output = texts.rejected
        reasons += texts.reject_reasons
        quality = rng.uniform(1, 5)
        confidence = rng.uniform(0.3, 0.8)
        if rng.random() < 0.45:
            user_rating = rng.choice((1, 2, 3))
    else:
        output = texts.final if rng.random() < 0.6 else texts.edited
        confidence = rng.uniform(0.5, 0.95)

    context_words = _words(system) + _words(texts.prompt) + sum(_words(m["content"]) for m in texts.messages or [])
    prompt_tokens, completion_tokens = int(context_words * 1.3) + 4, int(_words(output) * 1.3) + 1
    price_in, price_out = MODEL_PRICES[agent.model]
    record: dict[str, Any] = {
        "log_id": f"{rng.getrandbits(128):032x}",
        "timestamp": when.isoformat(timespec="milliseconds"),
        "task": task,
        "agent": agent.name,
        "user_id": user_id,
        "system_prompt": system,
    }
    if texts.messages:
        record["messages"] = texts.messages
    record.update(prompt=texts.prompt, output=output)
    if final_output is not None:
        record["final_output"] = final_output
    # some applications leave the decision out until a reviewer acts (the contract's default is pending)
    if decision != "pending" or rng.random() < 0.5:
        record["decision"] = decision
    if quality is not None:
        record["quality_score"] = round(quality, 1)
    if user_rating is not None:
        record["user_rating"] = user_rating
    record["confidence"] = round(confidence, 3)
    if texts.topic:
        record["topic"] = texts.topic
    record.update(reasoning_mode=agent.reasoning_mode, model=agent.model)
    if adapter:
        record["adapter_version"] = adapter
    if experiment:
        record.update(experiment_id=experiment, variant=variant)
    record["attempt"] = attempt
    if reasons:
        record["failure_reasons"] = reasons
    record.update(
        latency_ms=round(agent.latency_ms * rng.lognormvariate(0, 0.3), 1),
        cost_usd=round(prompt_tokens * price_in + completion_tokens * price_out, 8),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        metadata=texts.metadata,
    )
    return record


def _bad_lines(rng: random.Random, good: list[dict], when: datetime) -> list[tuple[str, str]]:
    """Planted lines that break the contract (with the quarantine reason), a blank line and two duplicates."""

    def broken(**changes: Any) -> dict:
        record = dict(_record(rng, when, False), **changes)
        return {k: v for k, v in record.items() if v is not None}

    conflicting = dict(good[1], output=good[1]["output"] + " (regenerated)")
    return [
        ("invalid_json", json.dumps(broken())[:80]),
        ("missing_field:output", json.dumps(broken(output=None))),
        ("bad_task_name", json.dumps(broken(task="../x"))),
        ("out_of_range:quality_score", json.dumps(broken(quality_score=12))),
        ("bad_enum:decision", json.dumps(broken(decision="maybe"))),
        ("bad_timestamp", json.dumps(broken(timestamp="yesterday"))),
        ("bad_type:prompt", json.dumps(broken(prompt=42))),
        ("blank", ""),
        ("exact_duplicate", json.dumps(good[0], ensure_ascii=False)),
        ("conflicting_duplicate", json.dumps(conflicting, ensure_ascii=False)),
    ]


def _write(target: Path, lines: list[str]) -> None:
    """Write lines atomically; gzip without a name or mtime so the same lines give the same bytes."""
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with atomic_path(target) as tmp:
        if target.name.endswith(".gz"):
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                gz.write(data)
        else:
            tmp.write_bytes(data)


def write_demo_inbox(
    inbox_dir: Path, records: int = 3000, days: int = 30, seed: int = 0, end: datetime | None = None
) -> dict[str, Any]:
    """Write `records` demo interactions over the `days` before `end` (default: today 00:00 UTC) into the inbox."""
    if records < 10 or days < 1:
        raise ValueError("the demo needs at least 10 records and 1 day")
    end = end or datetime.combine(datetime.now(UTC).date(), time(), tzinfo=UTC)
    # the contract reads naive times as UTC
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    start, span = end - timedelta(days=days), days * 86400.0
    recent_from = end - timedelta(days=REGRESSION_DAYS)
    rng = random.Random(seed)
    moments = sorted(start + timedelta(seconds=int(rng.random() * span * 1000) / 1000) for _ in range(records))
    good = [_record(rng, when, when >= recent_from) for when in moments]

    inbox_dir = Path(inbox_dir)
    inbox_dir.mkdir(parents=True, exist_ok=True)
    size = -(-records // FILES)
    chunks = [good[i : i + size] for i in range(0, records, size)]
    names = [f"demo-{seed}-{i + 1}.jsonl" for i in range(len(chunks))]
    names[-1] += ".gz"
    bad = _bad_lines(rng, chunks[1], moments[size])
    lines_total = 0
    for index, (name, chunk) in enumerate(zip(names, chunks)):
        lines = [json.dumps(r, ensure_ascii=False) for r in chunk]
        if index == 1:
            # spread the planted lines through the file, each duplicate after the record it copies
            step = max(1, len(lines) // (len(bad) + 1))
            for k, (_, line) in reversed(list(enumerate(bad, start=1))):
                lines.insert(min(len(lines), k * step), line)
        _write(inbox_dir / name, lines)
        lines_total += len(lines)

    decisions: dict[str, Counter] = defaultdict(Counter)
    for r in good:
        decisions[r["task"]][r.get("decision", "pending")] += 1
    reasons = Counter(reason for reason, _ in bad)
    return {
        "inbox": str(inbox_dir),
        "files": names,
        "lines": lines_total,
        "records": records,
        "bad_lines": {k: v for k, v in reasons.items() if k not in ("blank", "exact_duplicate")},
        "blank_lines": reasons["blank"],
        "exact_duplicates": reasons["exact_duplicate"],
        "tasks": {task: sum(c.values()) for task, c in sorted(decisions.items())},
        "decisions": {task: dict(sorted(c.items())) for task, c in sorted(decisions.items())},
        "start": start.isoformat(),
        "end": end.isoformat(),
    }
