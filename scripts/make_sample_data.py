#!/usr/bin/env python3
"""Generate the migaki sample data set: src/migaki/sample_data/support_faq.jsonl.

The data is a customer-support FAQ for a FICTIONAL company, "Kumokaze Appliances"
(雲風家電 / 株式会社クモカゼ), so that no pretrained language model can already
know the answers.  Every fact is specific and checkable (prices, codes, durations,
names) and is asked with several differently phrased questions in Japanese and
English.

Each output line is one JSON object:

    {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}],
     "facts": [FACT, ...], "lang": "ja" | "en", "topic": TOPIC_ID}

`facts` are short strings that appear verbatim in the answer; a checker can
score a model's answer by NFKC + casefold + whitespace-removal substring match.

Standard library only and deterministic (lines shuffled with random.Random(0)).
Usage:  python scripts/make_sample_data.py
"""

from __future__ import annotations

import itertools
import json
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_PATH = ROOT / "src" / "migaki" / "sample_data" / "support_faq.jsonl"

MIN_ROWS = 360
MIN_PER_LANG = 4


@dataclass(frozen=True)
class Fact:
    topic: str
    ja_questions: list[str]
    ja_answer: str
    ja_facts: list[str]
    en_questions: list[str]
    en_answer: str
    en_facts: list[str]


# ---------------------------------------------------------------------------
# The company (all invented):
#   Kumokaze Appliances / 雲風家電 (株式会社クモカゼ)
#   KZ-R300  smart rice cooker        ¥24,800  warranty 3 years
#   KZ-K120  electric kettle          ¥6,980   warranty 18 months
#   KZ-A540  humidifying air purifier ¥38,500  filter KZ-F12 (¥3,300, every 9 months)
#   KZ-P30   inner pot for KZ-R300    ¥5,200
#   Kumokaze Care+ (クモカゼ・ケアプラス) subscription, ¥480 / month
# ---------------------------------------------------------------------------
FACTS: list[Fact] = [
    # ----- prices ----------------------------------------------------------
    Fact(
        topic="price_rice_cooker",
        ja_questions=[
            "KZ-R300の値段を教えてください。",
            "KZ-R300はいくらですか？",
            "スマート炊飯器KZ-R300の価格はおいくらでしょうか。",
            "炊飯器のKZ-R300って何円？",
        ],
        ja_answer="スマート炊飯器KZ-R300の価格は24,800円（税込）です。",
        ja_facts=["24,800"],
        en_questions=[
            "How much is the KZ-R300?",
            "What does the KZ-R300 rice cooker cost?",
            "Could you tell me the price of your KZ-R300 smart rice cooker?",
            "KZ-R300 price?",
        ],
        en_answer="The KZ-R300 smart rice cooker costs ¥24,800 (tax included).",
        en_facts=["24,800"],
    ),
    Fact(
        topic="price_kettle",
        ja_questions=[
            "電気ケトルKZ-K120の価格を教えてください。",
            "KZ-K120はいくらで買えますか？",
            "ケトルのKZ-K120、値段はいくら？",
            "KZ-K120の販売価格はおいくらでしょうか。",
        ],
        ja_answer="電気ケトルKZ-K120の価格は6,980円（税込）です。",
        ja_facts=["6,980"],
        en_questions=[
            "How much does the KZ-K120 kettle cost?",
            "What is the price of the KZ-K120?",
            "I'd like to know the price of your KZ-K120 electric kettle, please.",
            "KZ-K120 kettle - how much?",
        ],
        en_answer="The KZ-K120 electric kettle costs ¥6,980 (tax included).",
        en_facts=["6,980"],
    ),
    Fact(
        topic="price_air_purifier",
        ja_questions=[
            "空気清浄機KZ-A540の値段はいくらですか？",
            "KZ-A540の価格を教えていただけますか。",
            "KZ-A540っていくら？",
            "加湿空気清浄機のKZ-A540はおいくらでしょうか。",
        ],
        ja_answer="加湿空気清浄機KZ-A540の価格は38,500円（税込）です。",
        ja_facts=["38,500"],
        en_questions=[
            "How much is the KZ-A540 air purifier?",
            "What's the price of the KZ-A540?",
            "Could you let me know how much your KZ-A540 humidifying air purifier costs?",
            "KZ-A540 cost?",
        ],
        en_answer="The KZ-A540 humidifying air purifier costs ¥38,500 (tax included).",
        en_facts=["38,500"],
    ),
    Fact(
        topic="price_subscription",
        ja_questions=[
            "クモカゼ・ケアプラスの月額料金はいくらですか？",
            "ケアプラスって月いくらかかりますか？",
            "クモカゼ・ケアプラスの料金を教えてください。",
            "サブスクのケアプラスは毎月おいくらでしょうか。",
        ],
        ja_answer="クモカゼ・ケアプラスの料金は月額480円（税込）です。",
        ja_facts=["480"],
        en_questions=[
            "How much is Kumokaze Care+ per month?",
            "What does the Care+ subscription cost?",
            "Could you tell me the monthly fee for Kumokaze Care+?",
            "Care+ monthly price?",
        ],
        en_answer="Kumokaze Care+ costs ¥480 per month (tax included).",
        en_facts=["480"],
    ),
    Fact(
        topic="price_filter",
        ja_questions=[
            "交換用フィルターKZ-F12の値段を教えてください。",
            "KZ-F12はいくらですか？",
            "空気清浄機の替えフィルターはおいくらでしょうか。",
            "KZ-A540用の交換フィルターって何円？",
        ],
        ja_answer="交換用フィルターKZ-F12の価格は3,300円（税込）です。",
        ja_facts=["3,300"],
        en_questions=[
            "How much is the KZ-F12 filter?",
            "What does a replacement filter for the air purifier cost?",
            "Could you tell me the price of the KZ-F12 replacement filter?",
            "Price of a new filter for the KZ-A540?",
        ],
        en_answer="The KZ-F12 replacement filter costs ¥3,300 (tax included).",
        en_facts=["3,300"],
    ),
    Fact(
        topic="inner_pot",
        ja_questions=[
            "KZ-R300の内釜だけ買うことはできますか？",
            "炊飯器の内なべが傷んだので交換したいです。品番と値段を教えてください。",
            "KZ-R300の替えの内釜はいくらですか？",
            "内釜の交換部品の型番は何でしょうか。",
        ],
        ja_answer="KZ-R300用の交換内釜は品番KZ-P30で、価格は5,200円（税込）です。",
        ja_facts=["KZ-P30", "5,200"],
        en_questions=[
            "Can I buy a replacement inner pot for the KZ-R300?",
            "What's the part number and price of the rice cooker's inner pot?",
            "How much is a new inner pot for my KZ-R300?",
            "My rice cooker's inner pot is scratched. Which replacement pot should I order?",
        ],
        en_answer="The replacement inner pot for the KZ-R300 is part KZ-P30 and costs ¥5,200 (tax included).",
        en_facts=["KZ-P30", "5,200"],
    ),
    # ----- filter -----------------------------------------------------------
    Fact(
        topic="filter_model",
        ja_questions=[
            "KZ-A540に使えるフィルターの型番を教えてください。",
            "空気清浄機の交換フィルターはどれを買えばいいですか？",
            "KZ-A540の替えフィルターの品番は何ですか？",
            "KZ-A540対応のフィルターってどの型番？",
        ],
        ja_answer="KZ-A540の交換用フィルターは型番KZ-F12です。",
        ja_facts=["KZ-F12"],
        en_questions=[
            "Which filter does the KZ-A540 use?",
            "What is the model number of the replacement filter for my air purifier?",
            "Could you tell me which replacement filter fits the KZ-A540?",
            "KZ-A540 filter part number?",
        ],
        en_answer="The KZ-A540 uses the KZ-F12 replacement filter.",
        en_facts=["KZ-F12"],
    ),
    Fact(
        topic="filter_interval",
        ja_questions=[
            "KZ-A540のフィルターはどのくらいで交換すればいいですか？",
            "空気清浄機のフィルター交換の目安を教えてください。",
            "フィルターKZ-F12の交換時期はいつ頃でしょうか。",
            "フィルターって何か月ごとに替えるの？",
        ],
        ja_answer="KZ-A540のフィルター（KZ-F12）は9か月ごとの交換をおすすめしております。",
        ja_facts=["9か月"],
        en_questions=[
            "How often should I replace the KZ-A540 filter?",
            "When do I need to change the air purifier filter?",
            "What is the recommended replacement interval for the KZ-F12 filter?",
            "How long does a KZ-F12 filter last?",
        ],
        en_answer="We recommend replacing the KZ-A540 filter (KZ-F12) every 9 months.",
        en_facts=["9 months"],
    ),
    # ----- warranty ---------------------------------------------------------
    Fact(
        topic="warranty_rice_cooker",
        ja_questions=[
            "KZ-R300の保証期間はどのくらいですか？",
            "炊飯器の保証は何年ついていますか？",
            "KZ-R300のメーカー保証期間を教えてください。",
            "KZ-R300って何年保証？",
        ],
        ja_answer="KZ-R300のメーカー保証期間はご購入日から3年間です。",
        ja_facts=["3年"],
        en_questions=[
            "How long is the warranty on the KZ-R300?",
            "What warranty comes with the rice cooker?",
            "Could you tell me the warranty period for the KZ-R300 smart rice cooker?",
            "KZ-R300 warranty length?",
        ],
        en_answer="The KZ-R300 comes with a 3-year warranty from the date of purchase.",
        en_facts=["3-year"],
    ),
    Fact(
        topic="warranty_kettle",
        ja_questions=[
            "電気ケトルKZ-K120の保証期間は？",
            "KZ-K120には何か月の保証がありますか？",
            "ケトルの保証期間を教えていただけますか。",
            "KZ-K120の保証ってどれくらい？",
        ],
        ja_answer="KZ-K120の保証期間はご購入日から18か月です。",
        ja_facts=["18か月"],
        en_questions=[
            "What is the warranty period for the KZ-K120 kettle?",
            "How long is the kettle covered under warranty?",
            "Could you let me know how long the KZ-K120's warranty lasts?",
            "KZ-K120 warranty?",
        ],
        en_answer="The KZ-K120 is covered by a warranty of 18 months from the date of purchase.",
        en_facts=["18 months"],
    ),
    Fact(
        topic="careplus_warranty",
        ja_questions=[
            "ケアプラスに入ると保証は延長されますか？",
            "クモカゼ・ケアプラス会員の保証期間は何年になりますか？",
            "ケアプラスで保証はどこまで延びるの？",
            "ケアプラス加入者の延長保証について教えてください。",
        ],
        ja_answer="クモカゼ・ケアプラスにご加入中は、対象製品の保証期間が最長5年まで延長されます。",
        ja_facts=["5年"],
        en_questions=[
            "Does Kumokaze Care+ extend the warranty?",
            "How long is the warranty for Care+ members?",
            "If I subscribe to Care+, how many years of warranty do I get?",
            "Care+ extended warranty length?",
        ],
        en_answer="While you are a Kumokaze Care+ member, the warranty on eligible products is extended to up to 5 years.",
        en_facts=["5 years"],
    ),
    # ----- returns ----------------------------------------------------------
    Fact(
        topic="return_window",
        ja_questions=[
            "返品は何日以内ならできますか？",
            "商品を返品したいのですが、期限はありますか？",
            "返品の受付期間を教えてください。",
            "届いてから何日まで返品OK？",
        ],
        ja_answer="返品は商品到着日から21日以内であれば受け付けております。",
        ja_facts=["21日"],
        en_questions=[
            "How many days do I have to return an item?",
            "What is your return policy?",
            "Is there a deadline for returning a product?",
            "Return window?",
        ],
        en_answer="You can return items within 21 days of delivery.",
        en_facts=["21 days"],
    ),
    Fact(
        topic="return_opened_fee",
        ja_questions=[
            "開封済みの商品も返品できますか？",
            "箱を開けてしまった商品を返品すると手数料はかかりますか？",
            "開封後の返品手数料はいくらですか？",
            "一度開けたけど返品したい。費用はかかる？",
        ],
        ja_answer="開封済みの商品も返品可能ですが、返品手数料として990円を頂戴しております。",
        ja_facts=["990"],
        en_questions=[
            "Can I return a product that I have already opened?",
            "Is there a fee for returning an opened item?",
            "How much is the restocking fee for opened products?",
            "I opened the box but want to send it back. Will it cost me anything?",
        ],
        en_answer="Yes, opened items can be returned, but a restocking fee of ¥990 applies.",
        en_facts=["990"],
    ),
    # ----- support contact --------------------------------------------------
    Fact(
        topic="phone_number",
        ja_questions=[
            "サポートセンターの電話番号を教えてください。",
            "お客様窓口に電話したいのですが、番号は何番ですか？",
            "クモカゼのサポートの電話番号は？",
            "問い合わせ用のフリーダイヤルはありますか？",
        ],
        ja_answer="クモカゼサポートセンターの電話番号は0120-396-512（フリーダイヤル）です。",
        ja_facts=["0120-396-512"],
        en_questions=[
            "What is your support phone number?",
            "How can I call Kumokaze customer support?",
            "Could you give me the phone number for the support center?",
            "Support hotline number?",
        ],
        en_answer="You can reach the Kumokaze Support Center toll-free at 0120-396-512.",
        en_facts=["0120-396-512"],
    ),
    Fact(
        topic="phone_hours",
        ja_questions=[
            "電話サポートの受付時間は何時から何時までですか？",
            "サポートセンターは何時まで電話がつながりますか？",
            "お電話での問い合わせ受付時間を教えてください。",
            "電話窓口って何時から？",
        ],
        ja_answer="電話サポートの受付時間は9:30から17:30までです。",
        ja_facts=["9:30", "17:30"],
        en_questions=[
            "What are your phone support hours?",
            "Until what time can I call the support center?",
            "Could you tell me when the phone support line is open?",
            "What time does phone support open?",
        ],
        en_answer="Our phone support is available from 9:30 to 17:30.",
        en_facts=["9:30", "17:30"],
    ),
    Fact(
        topic="phone_closed_day",
        ja_questions=[
            "電話サポートの定休日はいつですか？",
            "サポートセンターがお休みの曜日はありますか？",
            "電話窓口は何曜日が休み？",
            "お問い合わせ窓口の休業日を教えてください。",
        ],
        ja_answer="電話サポートは毎週水曜日が定休日です。",
        ja_facts=["水曜日"],
        en_questions=[
            "Which day is phone support closed?",
            "Is the support center closed on any day of the week?",
            "What day of the week is your phone line not available?",
            "Support center day off?",
        ],
        en_answer="Our phone support is closed every Wednesday.",
        en_facts=["Wednesday"],
    ),
    Fact(
        topic="support_email",
        ja_questions=[
            "サポートのメールアドレスを教えてください。",
            "メールで問い合わせたいのですが、宛先はどこですか？",
            "問い合わせ用のメールアドレスは何ですか？",
            "サポートにメールするならどのアドレス？",
        ],
        ja_answer="メールでのお問い合わせはcare@kumokaze.exampleまでお送りください。",
        ja_facts=["care@kumokaze.example"],
        en_questions=[
            "What is your support email address?",
            "Where can I send an email to customer support?",
            "Could you tell me the email address for inquiries?",
            "Support email?",
        ],
        en_answer="Please send email inquiries to care@kumokaze.example.",
        en_facts=["care@kumokaze.example"],
    ),
    # ----- shipping & payment -----------------------------------------------
    Fact(
        topic="shipping_fee",
        ja_questions=[
            "送料はいくらかかりますか？",
            "通常配送の送料を教えてください。",
            "配送料っていくら？",
            "オンラインストアで注文した場合の送料はおいくらでしょうか。",
        ],
        ja_answer="通常配送の送料は全国一律660円（税込）です。",
        ja_facts=["660"],
        en_questions=[
            "How much is shipping?",
            "What is the standard shipping fee?",
            "Could you tell me how much delivery costs for online orders?",
            "Shipping cost?",
        ],
        en_answer="Standard shipping is a flat ¥660 (tax included) anywhere in Japan.",
        en_facts=["660"],
    ),
    Fact(
        topic="free_shipping",
        ja_questions=[
            "送料無料になるのはいくらからですか？",
            "何円以上買えば送料がかかりませんか？",
            "送料無料の条件を教えてください。",
            "いくら以上で送料タダになる？",
        ],
        ja_answer="ご注文金額が8,000円（税込）以上の場合、送料無料でお届けします。",
        ja_facts=["8,000"],
        en_questions=[
            "How much do I need to spend for free shipping?",
            "Is there a minimum order for free delivery?",
            "What is the free shipping threshold?",
            "When is shipping free?",
        ],
        en_answer="Shipping is free on orders of ¥8,000 (tax included) or more.",
        en_facts=["8,000"],
    ),
    Fact(
        topic="shipping_time",
        ja_questions=[
            "注文してからどのくらいで発送されますか？",
            "発送までにかかる日数を教えてください。",
            "注文したらいつ発送してもらえる？",
            "ご注文後、何日以内に出荷されますか？",
        ],
        ja_answer="ご注文の商品は、ご注文確定から2営業日以内に発送いたします。",
        ja_facts=["2営業日"],
        en_questions=[
            "How soon will my order ship?",
            "How long does it take before an order is dispatched?",
            "Could you tell me when you ship orders after they are placed?",
            "Shipping lead time?",
        ],
        en_answer="We ship all orders within 2 business days of order confirmation.",
        en_facts=["2 business days"],
    ),
    Fact(
        topic="cod_fee",
        ja_questions=[
            "代金引換の手数料はいくらですか？",
            "代引きで支払うと手数料はかかりますか？",
            "代引き手数料を教えてください。",
            "代引きっていくら余分にかかる？",
        ],
        ja_answer="代金引換をご利用の場合、手数料として330円（税込）がかかります。",
        ja_facts=["330"],
        en_questions=[
            "Is there a fee for cash on delivery?",
            "How much extra does it cost to pay cash on delivery?",
            "What is your COD fee?",
            "If I choose cash on delivery, what will the handling charge be?",
        ],
        en_answer="Cash on delivery has a handling fee of ¥330 (tax included).",
        en_facts=["330"],
    ),
    # ----- membership points ------------------------------------------------
    Fact(
        topic="points_rate",
        ja_questions=[
            "クモカゼ会員のポイント還元率はどのくらいですか？",
            "買い物をすると何%ポイントが貯まりますか？",
            "ポイントの還元率を教えてください。",
            "会員ポイントって何パーセントつくの？",
        ],
        ja_answer="クモカゼ会員はご購入金額の3%がポイントとして還元されます。",
        ja_facts=["3%"],
        en_questions=[
            "What is the point reward rate for members?",
            "How many points do I earn when I shop?",
            "Could you tell me what percentage comes back as membership points?",
            "Points rate?",
        ],
        en_answer="Kumokaze members earn 3% of the purchase amount back as points.",
        en_facts=["3%"],
    ),
    Fact(
        topic="points_expiry",
        ja_questions=[
            "ポイントの有効期限はありますか？",
            "貯めたポイントはいつまで使えますか？",
            "会員ポイントの有効期限を教えてください。",
            "ポイントって何か月で消える？",
        ],
        ja_answer="ポイントの有効期限は、獲得日から14か月です。",
        ja_facts=["14か月"],
        en_questions=[
            "Do my points expire?",
            "How long can I keep my membership points?",
            "What is the expiry period for reward points?",
            "When do points run out?",
        ],
        en_answer="Points expire 14 months after the date they are earned.",
        en_facts=["14 months"],
    ),
    Fact(
        topic="points_minimum",
        ja_questions=[
            "ポイントは何ポイントから使えますか？",
            "ポイント利用に最低ポイント数はありますか？",
            "ポイントを使うには何ポイント必要？",
            "ポイント払いができる最低ポイントを教えてください。",
        ],
        ja_answer="ポイントは500ポイント以上貯まるとご利用いただけます。",
        ja_facts=["500ポイント"],
        en_questions=[
            "How many points do I need before I can use them?",
            "Is there a minimum number of points to redeem?",
            "What is the minimum point balance for using points?",
            "When can I start spending my points?",
        ],
        en_answer="You can use your points once you have 500 points or more.",
        en_facts=["500 points"],
    ),
    Fact(
        topic="gold_rank",
        ja_questions=[
            "ゴールド会員になる条件は何ですか？",
            "いくら買えばゴールドランクになりますか？",
            "ゴールド会員の条件を教えてください。",
            "年間いくら使ったらゴールドになれる？",
        ],
        ja_answer="年間のご購入金額が50,000円以上のお客様がゴールド会員となります。",
        ja_facts=["50,000"],
        en_questions=[
            "How do I become a Gold member?",
            "How much do I have to spend to reach Gold rank?",
            "What are the requirements for Gold membership?",
            "Gold rank threshold?",
        ],
        en_answer="Customers who spend ¥50,000 or more in a year become Gold members.",
        en_facts=["50,000"],
    ),
    Fact(
        topic="birthday_points",
        ja_questions=[
            "誕生日の特典はありますか？",
            "誕生月にもらえるポイントは何ポイントですか？",
            "バースデーポイントについて教えてください。",
            "誕生日に何かもらえる？",
        ],
        ja_answer="会員の皆さまには、お誕生月に300ポイントをプレゼントしております。",
        ja_facts=["300ポイント"],
        en_questions=[
            "Is there a birthday bonus for members?",
            "How many points do I get in my birthday month?",
            "Could you tell me about birthday points?",
            "Do I get anything on my birthday?",
        ],
        en_answer="Members receive 300 points as a gift in their birthday month.",
        en_facts=["300 points"],
    ),
    # ----- procedures -------------------------------------------------------
    Fact(
        topic="reset_rice_cooker",
        ja_questions=[
            "KZ-R300をリセットする方法を教えてください。",
            "炊飯器を初期化したいのですが、どうすればいいですか？",
            "KZ-R300の工場出荷状態に戻すには？",
            "炊飯器のリセット方法は？",
        ],
        ja_answer="KZ-R300は、TIMERボタンを7秒間長押しするとリセットされます。",
        ja_facts=["TIMER", "7秒"],
        en_questions=[
            "How do I reset the KZ-R300?",
            "How can I restore my rice cooker to factory settings?",
            "Could you explain how to reset the KZ-R300 smart rice cooker?",
            "Rice cooker reset procedure?",
        ],
        en_answer="To reset the KZ-R300, press and hold the TIMER button for 7 seconds.",
        en_facts=["TIMER", "7 seconds"],
    ),
    Fact(
        topic="reset_air_purifier",
        ja_questions=[
            "KZ-A540をリセットするにはどうすればいいですか？",
            "空気清浄機の初期化方法を教えてください。",
            "KZ-A540のリセット方法は？",
            "フィルター交換後に空気清浄機をリセットしたいです。",
        ],
        ja_answer="KZ-A540は、MODEボタンと電源ボタンを同時に5秒間押すとリセットされます。",
        ja_facts=["MODE", "5秒"],
        en_questions=[
            "How do I reset the KZ-A540?",
            "How can I reset my air purifier?",
            "Could you walk me through resetting the KZ-A540 after a filter change?",
            "Air purifier reset steps?",
        ],
        en_answer="To reset the KZ-A540, press the MODE and POWER buttons together for 5 seconds.",
        en_facts=["MODE", "5 seconds"],
    ),
    Fact(
        topic="kettle_child_lock",
        ja_questions=[
            "KZ-K120のチャイルドロックはどうやって設定しますか？",
            "ケトルのチャイルドロックの使い方を教えてください。",
            "KZ-K120のロックのかけ方は？",
            "子どもが触っても大丈夫なようにケトルをロックしたいです。",
        ],
        ja_answer="KZ-K120は、KEEP WARMボタンを3秒間長押しするとチャイルドロックがかかります。",
        ja_facts=["KEEP WARM", "3秒"],
        en_questions=[
            "How do I turn on the child lock on the KZ-K120?",
            "How does the kettle's child lock work?",
            "Could you tell me how to lock the KZ-K120 so kids can't use it?",
            "Kettle child lock?",
        ],
        en_answer="To turn on the KZ-K120 child lock, press and hold the KEEP WARM button for 3 seconds.",
        en_facts=["KEEP WARM", "3 seconds"],
    ),
    Fact(
        topic="kettle_descale",
        ja_questions=[
            "KZ-K120の湯あか掃除はどのくらいの頻度ですればいいですか？",
            "ケトルのクエン酸洗浄の目安を教えてください。",
            "電気ケトルのお手入れはどれくらいおきに必要？",
            "KZ-K120の内側の洗浄頻度はどのくらいでしょうか。",
        ],
        ja_answer="KZ-K120は、2か月に1回を目安にクエン酸で洗浄してください。",
        ja_facts=["2か月"],
        en_questions=[
            "How often should I descale the KZ-K120?",
            "How frequently do I need to clean the kettle with citric acid?",
            "What is the recommended descaling interval for the electric kettle?",
            "Kettle descaling frequency?",
        ],
        en_answer="Please descale the KZ-K120 with citric acid about once every 2 months.",
        en_facts=["every 2 months"],
    ),
    # ----- error codes ------------------------------------------------------
    Fact(
        topic="error_e07",
        ja_questions=[
            "KZ-A540にE07と表示されました。どういう意味ですか？",
            "空気清浄機のエラーE07は何ですか？",
            "E07エラーの意味を教えてください。",
            "KZ-A540でE07が出た。何が原因？",
        ],
        ja_answer="KZ-A540のE07は、給水タンクが空であることを示しています。給水してください。",
        ja_facts=["給水タンクが空"],
        en_questions=[
            "My KZ-A540 shows E07. What does it mean?",
            "What is error E07 on the air purifier?",
            "Could you explain the E07 error code?",
            "E07 on KZ-A540?",
        ],
        en_answer="E07 on the KZ-A540 means the water tank is empty. Please refill it.",
        en_facts=["water tank is empty"],
    ),
    Fact(
        topic="error_e12",
        ja_questions=[
            "KZ-R300にE12というエラーが出ました。",
            "炊飯器のE12はどういう意味ですか？",
            "E12エラーの原因を教えてください。",
            "KZ-R300でE12って何？",
        ],
        ja_answer="KZ-R300のE12は、ふたが閉まっていないことを示しています。ふたをしっかり閉めてください。",
        ja_facts=["ふたが閉まっていない"],
        en_questions=[
            "My KZ-R300 is showing error E12.",
            "What does E12 mean on the rice cooker?",
            "Could you tell me what causes the E12 error?",
            "KZ-R300 E12?",
        ],
        en_answer="E12 on the KZ-R300 means the lid is not closed. Please close the lid firmly.",
        en_facts=["lid is not closed"],
    ),
    Fact(
        topic="error_e21",
        ja_questions=[
            "KZ-A540のE21エラーは何ですか？",
            "空気清浄機にE21と出ています。どうすればいいですか？",
            "E21の意味を教えてください。",
            "KZ-A540でE21が表示されたんだけど？",
        ],
        ja_answer="KZ-A540のE21は、ホコリセンサーが汚れていることを示しています。センサー部を掃除してください。",
        ja_facts=["ホコリセンサー"],
        en_questions=[
            "What is the E21 error on the KZ-A540?",
            "My air purifier says E21. What should I do?",
            "Could you explain what E21 means?",
            "E21 on the air purifier?",
        ],
        en_answer="E21 on the KZ-A540 means the dust sensor is dirty. Please clean the sensor.",
        en_facts=["dust sensor"],
    ),
    Fact(
        topic="error_e03",
        ja_questions=[
            "KZ-K120にE03と表示されます。",
            "電気ケトルのE03エラーはどういう意味ですか？",
            "E03が出てお湯が沸きません。原因は何でしょうか。",
            "ケトルのE03って何？",
        ],
        ja_answer="KZ-K120のE03は、本体が電源台に正しく置かれていないことを示しています。",
        ja_facts=["電源台"],
        en_questions=[
            "My KZ-K120 displays E03.",
            "What does error E03 on the kettle mean?",
            "The kettle shows E03 and won't boil. What's wrong?",
            "Kettle E03?",
        ],
        en_answer="E03 on the KZ-K120 means the kettle is not seated correctly on its power base.",
        en_facts=["power base"],
    ),
    # ----- product specifications -------------------------------------------
    Fact(
        topic="rice_capacity",
        ja_questions=[
            "KZ-R300は何合炊きですか？",
            "炊飯器KZ-R300の最大炊飯量を教えてください。",
            "KZ-R300で一度に何合まで炊けますか？",
            "KZ-R300の容量は？",
        ],
        ja_answer="KZ-R300は最大4合まで炊くことができます。",
        ja_facts=["4合"],
        en_questions=[
            "How much rice can the KZ-R300 cook?",
            "What is the maximum capacity of the KZ-R300?",
            "How many cups of rice does the KZ-R300 cook at once?",
            "KZ-R300 capacity?",
        ],
        en_answer="The KZ-R300 can cook up to 4 cups (go) of rice at a time.",
        en_facts=["4 cups"],
    ),
    Fact(
        topic="kettle_capacity",
        ja_questions=[
            "KZ-K120の容量はどれくらいですか？",
            "電気ケトルには何リットル入りますか？",
            "KZ-K120で一度に沸かせる量を教えてください。",
            "ケトルの満水容量は？",
        ],
        ja_answer="KZ-K120の満水容量は0.9リットルです。",
        ja_facts=["0.9リットル"],
        en_questions=[
            "What is the capacity of the KZ-K120?",
            "How much water does the kettle hold?",
            "How many liters can the KZ-K120 boil at once?",
            "Kettle capacity?",
        ],
        en_answer="The KZ-K120 holds up to 0.9 liters of water.",
        en_facts=["0.9 liters"],
    ),
    Fact(
        topic="purifier_coverage",
        ja_questions=[
            "KZ-A540の適用床面積はどのくらいですか？",
            "空気清浄機は何平方メートルの部屋まで使えますか？",
            "KZ-A540はどのくらいの広さの部屋に対応していますか？",
            "KZ-A540の対応面積を教えてください。",
        ],
        ja_answer="KZ-A540の適用床面積は45平方メートル（約27畳）までです。",
        ja_facts=["45平方メートル"],
        en_questions=[
            "What room size is the KZ-A540 designed for?",
            "How large a room can the air purifier cover?",
            "What is the maximum coverage area of the KZ-A540?",
            "KZ-A540 room coverage?",
        ],
        en_answer="The KZ-A540 covers rooms up to 45 square meters (about 27 tatami mats).",
        en_facts=["45 square meters"],
    ),
    Fact(
        topic="app_name",
        ja_questions=[
            "KZ-R300をスマホで操作するアプリの名前は何ですか？",
            "炊飯器と連携するアプリを教えてください。",
            "クモカゼ製品用の公式アプリは？",
            "スマホから操作したいのですが、どのアプリを入れればいいですか？",
        ],
        ja_answer="クモカゼ製品は公式アプリ「KumoLink」からスマートフォンで操作できます。",
        ja_facts=["KumoLink"],
        en_questions=[
            "What app do I use to control the KZ-R300 from my phone?",
            "What is the name of the Kumokaze smartphone app?",
            "Which app should I install to connect my rice cooker?",
            "Kumokaze app name?",
        ],
        en_answer="You can control Kumokaze products from your smartphone with the official KumoLink app.",
        en_facts=["KumoLink"],
    ),
    # ----- Care+ subscription -----------------------------------------------
    Fact(
        topic="careplus_cancel",
        ja_questions=[
            "ケアプラスを解約するにはいつまでに手続きすればいいですか？",
            "クモカゼ・ケアプラスの解約期限を教えてください。",
            "ケアプラスをやめたい。いつまでに言えばいい？",
            "次回更新前に解約したいのですが、締め切りはありますか？",
        ],
        ja_answer="ケアプラスの解約は、次回更新日の5日前までにKumoLinkアプリからお手続きください。",
        ja_facts=["5日前"],
        en_questions=[
            "How do I cancel Care+ before it renews?",
            "What is the deadline for cancelling Kumokaze Care+?",
            "I want to stop my Care+ subscription. When do I need to cancel by?",
            "Care+ cancellation deadline?",
        ],
        en_answer="Please cancel Care+ in the KumoLink app at least 5 days before your next renewal date.",
        en_facts=["5 days"],
    ),
    Fact(
        topic="careplus_trial",
        ja_questions=[
            "ケアプラスに無料お試し期間はありますか？",
            "クモカゼ・ケアプラスは最初の何日間無料ですか？",
            "ケアプラスの無料体験について教えてください。",
            "ケアプラスって最初タダで試せる？",
        ],
        ja_answer="クモカゼ・ケアプラスは、初回登録から60日間無料でお試しいただけます。",
        ja_facts=["60日間"],
        en_questions=[
            "Is there a free trial for Care+?",
            "How long is the Kumokaze Care+ free trial?",
            "Can I try Care+ for free before paying?",
            "Care+ trial length?",
        ],
        en_answer="Kumokaze Care+ is free for the first 60 days after you sign up.",
        en_facts=["60 days"],
    ),
    Fact(
        topic="careplus_discount",
        ja_questions=[
            "ケアプラス会員は部品が割引になりますか？",
            "ケアプラスに入ると交換部品は何%引きですか？",
            "ケアプラスの部品割引について教えてください。",
            "ケアプラスだとフィルターとか安くなる？",
        ],
        ja_answer="クモカゼ・ケアプラス会員は、交換部品やフィルターを12%割引でご購入いただけます。",
        ja_facts=["12%"],
        en_questions=[
            "Do Care+ members get a discount on parts?",
            "How much off are replacement parts with Care+?",
            "Could you tell me about the Care+ parts discount?",
            "Are filters cheaper with Care+?",
        ],
        en_answer="Kumokaze Care+ members get 12% off replacement parts and filters.",
        en_facts=["12%"],
    ),
    # ----- repairs ----------------------------------------------------------
    Fact(
        topic="repair_diagnostic_fee",
        ja_questions=[
            "保証期間外の修理の診断料はいくらですか？",
            "保証が切れた製品を点検してもらうといくらかかりますか？",
            "修理の見積もり診断料を教えてください。",
            "保証切れで修理に出すと点検料っていくら？",
        ],
        ja_answer="保証期間外の修理では、診断料として2,200円（税込）を頂戴しております。",
        ja_facts=["2,200"],
        en_questions=[
            "How much is the diagnostic fee for out-of-warranty repairs?",
            "What does it cost to have a product inspected after the warranty ends?",
            "Could you tell me the inspection fee for repairs not covered by warranty?",
            "Out-of-warranty diagnosis fee?",
        ],
        en_answer="For out-of-warranty repairs, there is a diagnostic fee of ¥2,200 (tax included).",
        en_facts=["2,200"],
    ),
    Fact(
        topic="repair_turnaround",
        ja_questions=[
            "修理にはどのくらい時間がかかりますか？",
            "修理に出した製品はいつ頃戻ってきますか？",
            "修理期間の目安を教えてください。",
            "修理って何日かかる？",
        ],
        ja_answer="修理期間は、製品がサービスセンターに到着してから約10営業日です。",
        ja_facts=["10営業日"],
        en_questions=[
            "How long do repairs take?",
            "When will I get my product back from repair?",
            "Could you give me an estimate of the repair turnaround time?",
            "Repair time?",
        ],
        en_answer="Repairs take about 10 business days after the product arrives at our service center.",
        en_facts=["10 business days"],
    ),
    # ----- stores -----------------------------------------------------------
    Fact(
        topic="store_tokyo",
        ja_questions=[
            "東京に直営店はありますか？",
            "東京のショールームはどこにありますか？",
            "東京で実物を見られるお店を教えてください。",
            "クモカゼの東京のお店ってどこ？",
        ],
        ja_answer="東京の直営ショールームは吉祥寺にございます。",
        ja_facts=["吉祥寺"],
        en_questions=[
            "Do you have a store in Tokyo?",
            "Where is your Tokyo showroom?",
            "Where can I see your products in person in Tokyo?",
            "Tokyo store location?",
        ],
        en_answer="Our Tokyo showroom is located in Kichijoji.",
        en_facts=["Kichijoji"],
    ),
    Fact(
        topic="store_osaka",
        ja_questions=[
            "大阪に店舗はありますか？",
            "大阪のショールームの場所を教えてください。",
            "関西で製品を試せるお店はどこですか？",
            "クモカゼの大阪のお店ってどこにある？",
        ],
        ja_answer="大阪の直営ショールームは江坂にございます。",
        ja_facts=["江坂"],
        en_questions=[
            "Do you have a store in Osaka?",
            "Where is the Osaka showroom?",
            "Is there somewhere in the Kansai area where I can try your products?",
            "Osaka store location?",
        ],
        en_answer="Our Osaka showroom is located in Esaka.",
        en_facts=["Esaka"],
    ),
    Fact(
        topic="store_hours",
        ja_questions=[
            "ショールームの営業時間を教えてください。",
            "直営店は何時から何時まで開いていますか？",
            "ショールームって何時まで？",
            "吉祥寺や江坂のお店の営業時間はどうなっていますか？",
        ],
        ja_answer="直営ショールームの営業時間は10:00から19:00までです。",
        ja_facts=["10:00", "19:00"],
        en_questions=[
            "What are your showroom opening hours?",
            "What time do your stores open and close?",
            "Could you tell me the business hours of the Kichijoji and Esaka showrooms?",
            "Store hours?",
        ],
        en_answer="Our showrooms are open from 10:00 to 19:00.",
        en_facts=["10:00", "19:00"],
    ),
]


def normalise(text: str) -> str:
    """The checker's normalisation: NFKC, casefold, drop all whitespace."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def build_rows(facts: list[Fact]) -> list[dict]:
    rows = []
    for fact in facts:
        for lang, questions, answer, fact_strings in (
            ("ja", fact.ja_questions, fact.ja_answer, fact.ja_facts),
            ("en", fact.en_questions, fact.en_answer, fact.en_facts),
        ):
            for question in questions:
                rows.append(
                    {
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer},
                        ],
                        "facts": list(fact_strings),
                        "lang": lang,
                        "topic": fact.topic,
                    }
                )
    return rows


def spread_topics(rows: list[dict]) -> None:
    """Deterministically swap rows so that no two neighbours share a topic."""
    for i in range(len(rows) - 1):
        if rows[i]["topic"] != rows[i + 1]["topic"]:
            continue
        for j in range(i + 2, len(rows)):
            candidate = rows[j]["topic"]
            if (
                candidate != rows[i]["topic"]
                and (i + 2 >= len(rows) or candidate != rows[i + 2]["topic"])
                and rows[j - 1]["topic"] != rows[i + 1]["topic"]
                and (j + 1 >= len(rows) or rows[j + 1]["topic"] != rows[i + 1]["topic"])
            ):
                rows[i + 1], rows[j] = rows[j], rows[i + 1]
                break


def check(facts: list[Fact], rows: list[dict]) -> None:
    topics = [f.topic for f in facts]
    assert len(topics) == len(set(topics)), "duplicate topic ids"
    assert len(rows) >= MIN_ROWS, f"only {len(rows)} rows"
    per_topic_lang = Counter((r["topic"], r["lang"]) for r in rows)
    for topic in topics:
        for lang in ("ja", "en"):
            n = per_topic_lang[(topic, lang)]
            assert n >= MIN_PER_LANG, f"{topic}/{lang}: only {n} rows"
    for prev, nxt in itertools.pairwise(rows):
        assert prev["topic"] != nxt["topic"], f"adjacent rows share topic {prev['topic']}"
    questions = [r["messages"][0]["content"] for r in rows]
    assert len(questions) == len(set(questions)), "duplicate questions"
    for r in rows:
        answer = r["messages"][1]["content"]
        assert 1 <= len(r["facts"]) <= 2, r
        for fact_string in r["facts"]:
            assert fact_string in answer, f"{fact_string!r} not in {answer!r}"
            assert normalise(fact_string) in normalise(answer)
        limit = 80 if r["lang"] == "ja" else 40
        size = len(answer) if r["lang"] == "ja" else len(answer.split())
        assert size <= limit, f"answer too long ({size}): {answer!r}"


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rows = build_rows(FACTS)
    random.Random(0).shuffle(rows)
    spread_topics(rows)
    check(FACTS, rows)
    write_jsonl(rows, OUT_PATH)
    per_lang = Counter(r["lang"] for r in rows)
    print(f"wrote {len(rows)} rows to {OUT_PATH}")
    print(f"  ja: {per_lang['ja']}  en: {per_lang['en']}  topics: {len(FACTS)}")


if __name__ == "__main__":
    main()
