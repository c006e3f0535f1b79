"""Text in the user's language: Accept-Language negotiation and the message catalogue (en, ja).

The catalogue is plain data: a translator edits strings, never code.  Every
string is a ``str.format`` template whose fields are filled with values the
guard computed (counts, durations, names from config), and the page escapes
the result; no template ever receives a value from the request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_RANGE = re.compile(r"^(?:\*|[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*)$")
_MAX_RANGES = 32


def negotiate(header: str, available: Sequence[str], default: str) -> str:
    """The best of ``available`` for an Accept-Language header (RFC 9110 12.5.4, RFC 4647 lookup).

    Higher q wins; ties keep the header's order; ``ja-JP`` matches ``ja``; ``*``
    matches ``default``; ``q=0`` excludes a language; anything malformed is
    skipped, never an error (the header is client input).
    """
    ranked: list[tuple[float, int, str]] = []
    excluded: set[str] = set()
    for i, item in enumerate(header.split(",")[:_MAX_RANGES]):
        tag, *params = (p.strip() for p in item.split(";"))
        if not _RANGE.match(tag):
            continue
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
        tag = tag.lower()
        if q == 0.0:
            excluded.add(tag)
        elif 0.0 < q <= 1.0:
            ranked.append((-q, i, tag))
    ranked.sort()
    for _, _, tag in ranked:
        if tag == "*":
            if default not in excluded:
                return default
            continue
        parts = tag.split("-")
        while parts:  # lookup: ja-jp-x -> ja-jp -> ja
            cand = "-".join(parts)
            if cand in available and cand not in excluded:
                return cand
            parts.pop()
    return default


CATALOGUE: dict[str, dict[str, str]] = {
    "en": {
        "heading": "Confirm it's you",
        "intro.sent": "If the ID and password you entered are correct, we have sent a {digits}-digit code "
        "to the contact registered for your account. It is valid for {minutes} minutes.",
        "intro.totp": "Enter the {digits}-digit code shown in your authenticator app.",
        "intro.resent": "If the ID and password you entered are correct, a new code is on its way. "
        "Codes sent earlier no longer work.",
        "label": "Verification code",
        "hint": "Digits only. Spaces are ignored.",
        "submit": "Verify",
        "resend": "Send a new code",
        "wrong": "That code is not right. You can try {tries} more time(s).",
        "code_expired": "This code has expired. Ask for a new one.",
        "expired": "This sign-in has expired or was already completed. Please sign in again.",
        "too_many": "Too many wrong codes. For your safety this sign-in was cancelled. Please sign in again "
        "later.",
        "channel_failed": "We could not send a code right now. Please try again later, or contact support.",
        "send_limited": "Too many codes were requested. Please wait a few minutes and try again.",
        "resend_limited": "You cannot request more codes for this sign-in. Enter the last code you received, "
        "or sign in again later.",
        "forbidden": "This page has expired. Please sign in again.",
        "restart": "Sign in again",
        "no_code": "Didn't get a code? Check your spam folder, or contact support.",
        # the authenticator-app offer, right after a passed challenge
        "enrol.heading": "Set up an authenticator app",
        "enrol.intro": "You are verified. Next time you can use an authenticator app instead of waiting for "
        "a code: scan this QR code with the app, then enter the {digits}-digit code it shows.",
        "enrol.qr": "QR code to scan with your authenticator app",
        "enrol.manual": "Cannot scan it? Enter this key in the app instead:",
        "enrol.label": "Code from the app",
        "enrol.hint": "Skipping signs you in without setting up the app.",
        "enrol.submit": "Set up",
        "enrol.skip": "Skip for now",
        "enrol.wrong": "That code is not right. Check the app and try again ({tries} more time(s)).",
        "enrol.too_many": "Too many wrong codes: the app was not set up. You can continue to sign in.",
        "enrol.continue": "Continue",
        # e-mail and notifications
        "mail.subject": "{brand}: your verification code",
        "mail.body": "Your verification code is:\n\n    {code}\n\nIt is valid for {minutes} minutes.\n\n",
        "mail.verified": "Someone just signed in to your account with your password. If this was not you, "
        "your password is known to someone else: change it now, and do not share this code.\n",
        "mail.attempt": "Someone is trying to sign in to your account. If this was not you, "
        "do not share this code with anyone.\n",
        "notice.subject": "{brand}: new sign-in to your account",
        "notice.body": "A sign-in to your account from {place}, {device}, at {when}.\n\n"
        "If this was you, you can ignore this message. If this was not you, change your password "
        "now.\n",
        "ua.on": "{browser} on {os}",
        "ua.unknown": "an unknown browser",
        "place.unknown": "an unknown location",
        "when.format": "{y}-{m:02d}-{d:02d} {H:02d}:{M:02d} {tz}",
    },
    "ja": {
        "heading": "ご本人確認",
        "intro.sent": "入力された ID とパスワードが正しい場合、アカウントに登録された連絡先に "
        "{digits} 桁の確認コードを送信しました。有効期限は {minutes} 分です。",
        "intro.totp": "認証アプリに表示されている {digits} 桁のコードを入力してください。",
        "intro.resent": "入力された ID とパスワードが正しい場合、新しいコードを送信しました。"
        "以前のコードは使えません。",
        "label": "確認コード",
        "hint": "数字のみ。空白は無視されます。",
        "submit": "確認する",
        "resend": "コードを再送する",
        "wrong": "コードが正しくありません。あと {tries} 回試せます。",
        "code_expired": "このコードは有効期限が切れました。新しいコードを請求してください。",
        "expired": "このログインは有効期限が切れたか、すでに完了しています。もう一度ログインしてください。",
        "too_many": "誤ったコードが多すぎるため、安全のためこのログインを取り消しました。"
        "しばらくしてからもう一度ログインしてください。",
        "channel_failed": "現在コードを送信できません。しばらくしてからもう一度お試しいただくか、"
        "サポートにお問い合わせください。",
        "send_limited": "コードの請求が多すぎます。数分待ってからもう一度お試しください。",
        "resend_limited": "このログインではこれ以上コードを請求できません。"
        "最後に受け取ったコードを入力するか、"
        "しばらくしてからもう一度ログインしてください。",
        "forbidden": "このページは有効期限が切れました。もう一度ログインしてください。",
        "restart": "もう一度ログインする",
        "no_code": "コードが届かない場合は、迷惑メールフォルダをご確認いただくか、"
        "サポートにお問い合わせください。",
        "enrol.heading": "認証アプリの設定",
        "enrol.intro": "本人確認が完了しました。次回からはコードを待たずに認証アプリを使えます。"
        "この QR コードをアプリで読み取り、表示された {digits} 桁のコードを入力してください。",
        "enrol.qr": "認証アプリで読み取る QR コード",
        "enrol.manual": "読み取れない場合は、次のキーをアプリに入力してください:",
        "enrol.label": "アプリのコード",
        "enrol.hint": "スキップすると、アプリを設定せずにログインします。",
        "enrol.submit": "設定する",
        "enrol.skip": "今はスキップ",
        "enrol.wrong": "コードが正しくありません。アプリを確認してもう一度入力してください(あと {tries} 回)。",
        "enrol.too_many": "誤ったコードが多すぎるため、アプリは設定されませんでした。このままログインできます。",
        "enrol.continue": "続ける",
        "mail.subject": "{brand}: 確認コード",
        "mail.body": "確認コード:\n\n    {code}\n\n有効期限は {minutes} 分です。\n\n",
        "mail.verified": "たった今、あなたのパスワードでアカウントへのログインがありました。"
        "心当たりがない場合、パスワードが他人に知られています。すぐにパスワードを変更し、"
        "このコードは誰にも教えないでください。\n",
        "mail.attempt": "あなたのアカウントへのログインが試みられています。"
        "心当たりがない場合、このコードは誰にも教えないでください。\n",
        "notice.subject": "{brand}: アカウントへの新しいログイン",
        "notice.body": "{when} に {place} から {device} でアカウントへのログインがありました。\n\n"
        "ご自身によるものであれば、このメッセージは無視してください。"
        "心当たりがない場合は、すぐにパスワードを変更してください。\n",
        "ua.on": "{os} の {browser}",
        "ua.unknown": "不明なブラウザ",
        "place.unknown": "不明な場所",
        "when.format": "{y}年{m}月{d}日 {H:02d}:{M:02d} ({tz})",
    },
}

LANGUAGES = tuple(CATALOGUE)


def text(lang: str, key: str, **values: object) -> str:
    """The ``key`` message in ``lang`` (English when missing), formatted with guard-computed values."""
    table = CATALOGUE.get(lang, CATALOGUE["en"])
    template = table.get(key) or CATALOGUE["en"][key]
    return template.format(**values) if values else template
