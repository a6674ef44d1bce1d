"""Small demo task files in the layouts of ``conf/eval_tasks``, so the whole eval path runs on a CPU.

Every item is written for this project (short sentences, templates and arithmetic with seeded
random numbers); no benchmark item is copied. The numbers they give say that the pipeline works,
not how good a model is. ``ted_heb`` is built from the held-out aligned verses of the demo corpora
(``pairs_test.jsonl``: ``{"id", "he", "en"}``), translated Hebrew -> English.
"""

from __future__ import annotations

import random
from pathlib import Path

from hebatron_nemo.errors import DataError
from hebatron_nemo.utils.io import write_jsonl_atomic

__all__ = ["DEMO_TASKS", "write_demo_tasks"]

DEMO_TASKS = ("copa_heb", "arc_heb", "gsm8k_heb", "hebrew_qa", "hebrew_sentiment", "arc_en", "gsm8k_en", "ted_heb")

# (premise, cause, effect)
_COPA = [
    ("הרצפה במטבח הייתה רטובה.", "מישהו שפך מים.", "דני החליק ונפל."),
    ("הילד בכה.", "הוא נפל מהאופניים.", "אמא שלו חיבקה אותו."),
    ("החשמל בבית נפל.", "הייתה סערה חזקה בלילה.", "הדלקנו נרות."),
    ("האוטובוס איחר.", "היה פקק גדול בכביש.", "הגעתי מאוחר לעבודה."),
    ("הגינה התייבשה.", "לא ירד גשם כל הקיץ.", "הפרחים נבלו."),
    ("התלמידה קיבלה ציון גבוה במבחן.", "היא למדה כל השבוע.", "ההורים שלה שמחו מאוד."),
    ("המרק היה קר.", "הוא עמד על השולחן שעה ארוכה.", "חיממנו אותו שוב."),
    ("הכלב נבח בחוזקה.", "מישהו דפק בדלת.", "השכנים התעוררו."),
    ("הטלפון כבה.", "הסוללה נגמרה.", "לא יכולתי להתקשר הביתה."),
    ("החלב התקלקל.", "שכחנו אותו מחוץ למקרר.", "שפכנו אותו לכיור."),
    ("הנהג עצר את המכונית.", "הרמזור התחלף לאדום.", "הולכי הרגל חצו את הכביש."),
    ("הקבוצה ניצחה במשחק.", "השחקנים התאמנו קשה.", "האוהדים חגגו ברחובות."),
    ("הזכוכית נשברה.", "הכדור פגע בחלון.", "אספנו את השברים בזהירות."),
    ("העוגה נשרפה.", "היא נשארה בתנור יותר מדי זמן.", "קנינו עוגה במאפייה."),
    ("רינה הרגישה עייפה מאוד.", "היא לא ישנה כל הלילה.", "היא הלכה לישון מוקדם."),
    ("הנהר עלה על גדותיו.", "ירדו גשמים כבדים בהרים.", "הכביש ליד הנהר נסגר."),
]

# (question, correct answer, three distractors)
_ARC_HE = [
    ("מה הצמחים צריכים כדי לייצר מזון בתהליך הפוטוסינתזה?", "אור שמש", ("חול", "מלח", "רעש")),
    ("באיזה מצב צבירה נמצאים מים בטמפרטורה של מינוס עשר מעלות?", "מוצק", ("גז", "נוזל", "אדים")),
    ("איזה איבר בגוף שואב דם לכל הגוף?", "הלב", ("הכבד", "הריאות", "הכליות")),
    ("מה גורם ליום וללילה על כדור הארץ?", "סיבוב כדור הארץ סביב עצמו",
     ("סיבוב הירח סביב כדור הארץ", "תנועת העננים", "שינוי עונות השנה")),
    ("איזה בעל חיים הוא יונק?", "לווייתן", ("כריש", "צפרדע", "תנין")),
    ("מה קורה למים כשמחממים אותם למאה מעלות?", "הם רותחים", ("הם קופאים", "הם משנים צבע", "הם נעשים כבדים יותר")),
    ("איזה כוח מושך חפצים כלפי מטה?", "כוח המשיכה", ("כוח מגנטי", "כוח החיכוך", "כוח הרוח")),
    ("מהו מקור האור העיקרי של כדור הארץ?", "השמש", ("הירח", "הכוכבים", "הברקים")),
    ("איזה חומר מוליך חשמל היטב?", "נחושת", ("עץ", "גומי", "פלסטיק")),
    ("איזה גז בני אדם צריכים לנשום כדי לחיות?", "חמצן", ("הליום", "ארגון", "מימן")),
    ("כמה רגליים יש לעכביש?", "שמונה", ("שש", "ארבע", "עשר")),
    ("איזה כוכב לכת הוא הקרוב ביותר לשמש?", "כוכב חמה", ("מאדים", "צדק", "שבתאי")),
    ("מה התפקיד של השורשים בצמח?", "לספוג מים מהאדמה", ("לייצר פרחים", "לתפוס חרקים", "להפיץ זרעים")),
    ("איך נקרא המעבר של מים מנוזל לאדים?", "אידוי", ("קפיאה", "עיבוי", "התכה")),
    ("באיזה מכשיר מודדים טמפרטורה?", "מדחום", ("סרגל", "מאזניים", "שעון")),
    ("מה אוכלים בעלי חיים צמחוניים?", "צמחים", ("בשר", "דגים", "חרקים")),
    ("למה אנחנו רואים את הירח בלילה?", "הוא מחזיר את אור השמש",
     ("הוא מייצר אור משלו", "הוא עשוי מאש", "הוא נוגע בכדור הארץ")),
    ("באיזו יחידה מודדים אורך?", "מטר", ("קילוגרם", "ליטר", "שנייה")),
    ("מה קורה לקרח שמוציאים מהמקפיא ביום חם?", "הוא נמס", ("הוא גדל", "הוא מתקשה", "הוא מתקרר")),
    ("איזה חלק של הצמח הופך בדרך כלל לפרי?", "הפרח", ("העלה", "השורש", "הגבעול")),
    ("מה מגן על המוח בגוף האדם?", "הגולגולת", ("הצלעות", "הברך", "הציפורניים")),
    ("איזה בעל חיים מטיל ביצים?", "תרנגולת", ("פרה", "כלב", "סוס")),
    ("מה מודדים במאזניים?", "משקל", ("אורך", "זמן", "טמפרטורה")),
    ("מדוע כדאי ללבוש בגדים בהירים ביום חם?", "הם מחזירים חלק מקרינת השמש",
     ("הם כבדים יותר", "הם מייצרים רוח", "הם סופגים יותר חום")),
]

_ARC_EN = [
    ("Which gas do plants take in from the air to make their food?", "carbon dioxide", ("helium", "neon", "argon")),
    ("At sea level, at what temperature in degrees Celsius does water boil?", "100", ("0", "50", "10")),
    ("Which organ moves air in and out of the body?", "the lungs", ("the stomach", "the liver", "the skin")),
    ("What causes the seasons on Earth?", "the tilt of Earth's axis",
     ("the phases of the Moon", "the speed of the wind", "the size of the oceans")),
    ("Which of these animals is a mammal?", "a dolphin", ("a shark", "a frog", "a lizard")),
    ("Which tool measures air pressure?", "a barometer", ("a ruler", "a stopwatch", "a compass")),
    ("Which material is attracted to a magnet?", "iron", ("wood", "glass", "paper")),
    ("How many legs does an insect have?", "six", ("four", "eight", "ten")),
    ("What do the roots of a plant take from the soil?", "water and minerals", ("sunlight", "pollen", "seeds")),
    ("Which planet is known as the red planet?", "Mars", ("Venus", "Jupiter", "Saturn")),
    ("What happens to a puddle on a hot sunny day?", "the water evaporates",
     ("the water freezes", "the water turns into sand", "the puddle gets deeper")),
    ("Which form of energy does a battery store?", "chemical energy", ("sound energy", "wind energy", "light energy")),
    ("What is the main job of red blood cells?", "to carry oxygen",
     ("to digest food", "to grow hair", "to make bones")),
    ("Which unit is used to measure mass?", "kilogram", ("meter", "liter", "second")),
    ("Why does a metal spoon in hot soup become hot?", "metal conducts heat",
     ("metal makes its own heat", "soup is magnetic", "the spoon is heavy")),
    ("Which part of a plant makes seeds?", "the flower", ("the root", "the stem", "the bark")),
    ("Which animal hatches from an egg?", "a turtle", ("a cow", "a horse", "a rabbit")),
    ("What are animals that eat only plants called?", "herbivores", ("carnivores", "predators", "scavengers")),
    ("What keeps the planets moving around the Sun?", "gravity", ("friction", "sound", "wind")),
    ("Which of these is a chemical change?", "wood burning", ("ice melting", "paper tearing", "glass breaking")),
]

_NAMES_HE = ["דוד", "יונתן", "אורי", "משה", "עמית", "איתי", "נועם", "רון"]
_CITIES_HE = ["חיפה", "ירושלים", "באר שבע", "אילת", "נתניה", "טבריה", "צפת", "אשדוד"]
_JOBS_HE = ["רופא", "מורה", "נגר", "טבח", "מהנדס", "צלם", "נהג", "ספרן"]
_HOBBIES_HE = ["שחייה", "ציור", "גינון", "שחמט", "צילום", "ריצה", "בישול", "טיולים"]

_SENT_ITEMS = ["הסרט", "השירות במסעדה", "הספר החדש", "המלון", "הטיול לגליל", "הקונצרט", "האוכל", "המשחק"]
_SENT_POS = ["מצוין", "נהדר", "מרגש", "מהנה מאוד"]
_SENT_NEG = ["מאכזב", "גרוע", "משעמם", "מרגיז"]
_SENT_NEUTRAL = [
    "הפגישה נקבעה ליום {day} בשעה {h}.",
    "החנות נמצאת ברחוב הרצל מספר {n}.",
    "הרכבת הבאה יוצאת בעוד {n} דקות.",
    "המסמך כולל {n} עמודים ושני נספחים.",
    "ישיבת ועד הבית תתקיים ביום {day}.",
]
_DAYS_HE = ["ראשון", "שני", "שלישי", "רביעי", "חמישי"]


def _write(path: Path, rows: list[dict]) -> Path:
    write_jsonl_atomic(path, rows)
    return path


def _copa_rows(rng: random.Random) -> list[dict]:
    rows = []
    for i, (premise, cause, effect) in enumerate(_COPA):
        for relation, right, col in (("cause", cause, 1), ("effect", effect, 2)):
            other = _COPA[(i + rng.randint(1, len(_COPA) - 1)) % len(_COPA)][col]
            label = rng.randint(0, 1)
            choices = [right, other] if label == 0 else [other, right]
            rows.append({"idx": len(rows), "premise": premise, "choice1": choices[0], "choice2": choices[1],
                         "question": relation, "label": label})
    rng.shuffle(rows)
    return rows


def _arc_rows(items, rng: random.Random, prefix: str) -> list[dict]:
    rows = []
    for i, (question, right, wrong) in enumerate(items):
        opts = [right, *wrong]
        rng.shuffle(opts)
        labels = ["A", "B", "C", "D"]
        rows.append({"id": f"{prefix}-{i + 1:02d}", "question": question,
                     "choices": {"text": opts, "label": labels}, "answerKey": labels[opts.index(right)]})
    return rows


def _draw_gsm(rng: random.Random) -> tuple[int, dict]:
    """A problem type and its numbers (the language only picks the wording, never the numbers)."""
    t = rng.randrange(6)
    if t == 0:
        a, b = rng.randint(5, 30), rng.randint(2, 20)
        c = rng.randint(1, a + b - 1)
        return t, {"a": a, "b": b, "c": c, "ab": a + b, "ans": a + b - c}
    if t in (1, 2):
        a, b = (rng.randint(3, 9), rng.randint(3, 9)) if t == 1 else (rng.randint(5, 40), rng.randint(2, 14))
        return t, {"a": a, "b": b, "ans": a * b}
    if t == 3:
        a, b = rng.randint(3, 12), rng.randint(2, 8)
        c = next(x for x in (50, 100, 200) if x >= a * b)
        return t, {"a": a, "b": b, "c": c, "ab": a * b, "ans": c - a * b}
    if t == 4:
        a = rng.randint(20, 60)
        b, c = rng.randint(1, a - 1), rng.randint(1, 25)
        return t, {"a": a, "b": b, "c": c, "ans": a - b + c}
    b, k = rng.randint(2, 9), rng.randint(2, 12)
    return t, {"a": b * k, "b": b, "ans": k}


# (question, worked solution) of each problem type, per language
_GSM_TEXT = {
    "he": [
        ("לדנה היו {a} תפוחים. היא קנתה עוד {b} תפוחים ונתנה {c} תפוחים לחברה שלה. כמה תפוחים נשארו לדנה?",
         "לדנה היו {a} + {b} = {ab} תפוחים. אחרי שנתנה {c} נשארו לה {ab} - {c} = {ans} תפוחים."),
        ("בכיתה יש {a} שורות של שולחנות, ובכל שורה יש {b} שולחנות. כמה שולחנות יש בכיתה?",
         "בכיתה יש {a} * {b} = {ans} שולחנות."),
        ("יוסי קורא {a} עמודים בכל יום. כמה עמודים יקרא יוסי ב-{b} ימים?",
         "ב-{b} ימים יוסי יקרא {a} * {b} = {ans} עמודים."),
        ("מחברת עולה {a} שקלים. נועה קנתה {b} מחברות ושילמה בשטר של {c} שקלים. כמה שקלים קיבלה נועה בעודף?",
         "המחברות עלו {a} * {b} = {ab} שקלים. העודף הוא {c} - {ab} = {ans} שקלים."),
        ("באוטובוס נסעו {a} נוסעים. בתחנה ירדו {b} נוסעים ועלו {c} נוסעים. כמה נוסעים יש עכשיו באוטובוס?",
         "אחרי התחנה יש באוטובוס {a} - {b} + {c} = {ans} נוסעים."),
        ("אופה הכין {a} עוגיות וחילק אותן שווה בשווה ל-{b} קופסאות. כמה עוגיות יש בכל קופסה?",
         "בכל קופסה יש {a} / {b} = {ans} עוגיות."),
    ],
    "en": [
        ("Dana had {a} apples. She bought {b} more and gave {c} to a friend. How many apples does Dana have left?",
         "Dana had {a} + {b} = {ab} apples. After giving away {c} she has {ab} - {c} = {ans} apples."),
        ("A classroom has {a} rows of desks with {b} desks in each row. How many desks are there?",
         "There are {a} * {b} = {ans} desks."),
        ("Sam reads {a} pages every day. How many pages will Sam read in {b} days?",
         "In {b} days Sam reads {a} * {b} = {ans} pages."),
        ("A notebook costs {a} dollars. Noa buys {b} notebooks and pays with a {c} dollar bill. "
         "How much change does she get?",
         "The notebooks cost {a} * {b} = {ab} dollars. The change is {c} - {ab} = {ans} dollars."),
        ("A bus carries {a} passengers. At a stop {b} get off and {c} get on. How many passengers are on the bus now?",
         "Now there are {a} - {b} + {c} = {ans} passengers."),
        ("A baker made {a} cookies and shared them equally among {b} boxes. How many cookies are in each box?",
         "Each box has {a} / {b} = {ans} cookies."),
    ],
}


def _gsm(rng: random.Random, lang: str) -> tuple[str, str]:
    """One grade-school word problem in `lang` (he | en): (question, solution ending in ``#### <answer>``)."""
    t, v = _draw_gsm(rng)
    question, solution = _GSM_TEXT[lang][t]
    return question.format(**v), f"{solution.format(**v)}\n#### {v['ans']}"


def _gsm_rows(lang: str, rng: random.Random, n: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        q, a = _gsm(rng, lang)
        if q not in seen:  # identical random draws would make duplicate rows
            seen.add(q)
            rows.append({"question": q, "answer": a})
    return rows


def _qa_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        name, city = rng.choice(_NAMES_HE), rng.choice(_CITIES_HE)
        job, hobby, age = rng.choice(_JOBS_HE), rng.choice(_HOBBIES_HE), str(rng.randint(20, 70))
        context = (f"{name} בן {age}. עיר המגורים שלו היא {city}. "
                   f"המקצוע שלו הוא {job}, והתחביב האהוב עליו הוא {hobby}.")
        question, answer = rng.choice([
            (f"באיזו עיר גר {name}?", city),
            (f"מה המקצוע של {name}?", job),
            (f"מה התחביב האהוב על {name}?", hobby),
            (f"בן כמה {name}?", age),
        ])
        rows.append({"id": f"qa-he-{i + 1:02d}", "context": context, "question": question,
                     "answers": {"text": [answer], "answer_start": [context.index(answer)]}})
    return rows


def _sentiment_rows(rng: random.Random, per_label: int) -> list[dict]:
    rows = []
    for _ in range(per_label):
        item = rng.choice(_SENT_ITEMS)
        rows.append((rng.choice([f"{item} היה {{adj}}, ממש נהניתי.", f"{item} היה {{adj}} ואני ממליץ עליו לכולם."])
                     .format(adj=rng.choice(_SENT_POS)), 0))
        item = rng.choice(_SENT_ITEMS)
        rows.append((rng.choice([f"{item} היה {{adj}}, חבל על הזמן.", f"{item} היה {{adj}} ואני לא ממליץ עליו."])
                     .format(adj=rng.choice(_SENT_NEG)), 1))
        rows.append((rng.choice(_SENT_NEUTRAL).format(day=rng.choice(_DAYS_HE), h=f"{rng.randint(8, 18)}:00",
                                                       n=rng.randint(2, 90)), 2))
    rng.shuffle(rows)
    return [{"id": f"sent-he-{i + 1:02d}", "text": t, "label": label} for i, (t, label) in enumerate(rows)]


def _ted_rows(pairs: Path, rng: random.Random, n: int) -> list[dict]:
    from hebatron_nemo.demo.sft import read_pairs  # the one validating reader of the pairs files

    rows = [{"id": p.id, "he": p.he, "en": p.en} for p in read_pairs(pairs, clean_hebrew=False)]
    if not rows:
        raise DataError("no pairs", path=str(pairs))
    picked = sorted(rng.sample(range(len(rows)), min(n, len(rows))))
    return [rows[i] for i in picked]


def write_demo_tasks(out_root: str | Path, corpus_dir: str | Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Writes ``<out_root>/<task>/test.jsonl`` for the demo tasks (and ``dev.jsonl`` for the GSM8K
    pair, so both few-shot rules run) and returns ``{task: test file}``. Deterministic for a seed.
    ``ted_heb`` is written only when ``corpus_dir`` holds ``pairs_test.jsonl``."""
    out = Path(out_root)
    rng = random.Random(seed)
    written: dict[str, Path] = {}
    written["copa_heb"] = _write(out / "copa_heb" / "test.jsonl", _copa_rows(random.Random(rng.random())))
    for name, items, prefix in (("arc_heb", _ARC_HE, "arc-he"), ("arc_en", _ARC_EN, "arc-en")):
        written[name] = _write(out / name / "test.jsonl", _arc_rows(items, random.Random(rng.random()), prefix))
    for name, lang in (("gsm8k_heb", "he"), ("gsm8k_en", "en")):
        task_rng = random.Random(rng.random())
        rows = _gsm_rows(lang, task_rng, 35)
        written[name] = _write(out / name / "test.jsonl", rows[:30])
        _write(out / name / "dev.jsonl", rows[30:])
    written["hebrew_qa"] = _write(out / "hebrew_qa" / "test.jsonl", _qa_rows(random.Random(rng.random()), 30))
    written["hebrew_sentiment"] = _write(out / "hebrew_sentiment" / "test.jsonl",
                                         _sentiment_rows(random.Random(rng.random()), 10))
    ted_rng = random.Random(rng.random())
    if corpus_dir is not None and (Path(corpus_dir) / "pairs_test.jsonl").is_file():
        written["ted_heb"] = _write(out / "ted_heb" / "test.jsonl",
                                    _ted_rows(Path(corpus_dir) / "pairs_test.jsonl", ted_rng, 30))
    return written
