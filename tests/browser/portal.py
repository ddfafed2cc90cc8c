#!/usr/bin/env python3
"""The onboarding portal in a real browser: Debian's Chromium driven by Selenium through
/usr/bin/chromedriver. Run by tests/portal.rs, which starts certgate (gateway, enrolment listener
and portal) and a real upstream, invites the partner with the CLI and makes the CSR with openssl;
this script is the partner's developer and the approver in the browser, and curl as the partner's
client. A screenshot of each page goes to --screenshots.

Exit status 0 when every step behaved; anything else fails the Rust test with this script's
output. Nothing is skipped: a missing Chromium, driver or Selenium is a failure with its reason.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def fail(message):
    print(f"portal browser test: {message}", file=sys.stderr)
    sys.exit(1)


try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError as e:
    fail(f"Selenium is not installed ({e}): python3 -m pip install selenium (.ci/run does)")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class Scenario:
    def __init__(self, args):
        self.args = args
        self.shot = 0
        self.downloads = tempfile.mkdtemp(prefix="portal-downloads-")
        self.profile = tempfile.mkdtemp(prefix="portal-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--ignore-certificate-errors",
            "--window-size=1280,1000", f"--user-data-dir={self.profile}",
        ]:
            options.add_argument(flag)
        options.add_experimental_option("prefs", {
            "download.default_directory": self.downloads,
            "download.prompt_for_download": False,
        })
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)
        self.wait = WebDriverWait(self.driver, 20)

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
            shutil.rmtree(self.downloads, ignore_errors=True)

    # --- browser helpers ---

    def open(self, path):
        self.driver.get(self.args.portal + path)

    def screenshot(self, name):
        self.shot += 1
        path = os.path.join(self.args.screenshots, f"{self.shot:02d}-{name}.png")
        if not self.driver.save_screenshot(path):
            fail(f"no screenshot at {path}")
        print(f"screenshot {path}")

    def text(self, css):
        return self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css))).text

    def click(self, css):
        self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, css))).click()

    def type(self, css, value):
        field = self.driver.find_element(By.CSS_SELECTOR, css)
        field.clear()
        field.send_keys(value)

    def expect(self, condition, message):
        if not condition:
            self.screenshot("failure")
            fail(f"{message}\n--- page {self.driver.current_url} ---\n{self.driver.page_source[:4000]}")

    def sign_in(self, name):
        self.open("/portal/approver")
        if self.driver.find_elements(By.ID, "who"):
            self.click("form[action='/portal/approver/logout'] button")
        self.wait.until(EC.presence_of_element_located((By.ID, "admin_token")))
        # Keyboard only: the labelled fields in order, then Enter submits.
        self.type("#name", name)
        self.type("#admin_token", self.args.admin_token)
        self.driver.find_element(By.ID, "admin_token").submit()
        who = self.text("#who")
        self.expect(who == name, f"signed in as {who!r}, expected {name!r}")

    # --- curl as the partner's client ---

    def call(self, path, cert, key):
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
             "--cacert", self.args.server_ca, "--cert", cert, "--key", key,
             self.args.gateway + path],
            capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else f"curl exit {out.returncode}"

    def until(self, path, cert, key, wanted, what):
        deadline = time.monotonic() + 30
        while True:
            got = self.call(path, cert, key)
            if wanted(got):
                print(f"curl {path}: {got} ({what})")
                return got
            if time.monotonic() > deadline:
                fail(f"curl {path}: still {got}, expected {what}")
            time.sleep(0.25)

    # --- the scenario ---

    def run(self):
        a = self.args
        # The partner's developer enrols: token, CSR file (read into the form by portal.js).
        self.open("/portal/")
        self.screenshot("enrol-form")
        self.expect(self.driver.find_element(By.CSS_SELECTOR, "label[for=token]").text,
                    "the token field has no label")
        self.type("#token", a.token)
        self.driver.find_element(By.ID, "csr_file").send_keys(a.csr)
        self.wait.until(lambda d: "BEGIN CERTIFICATE REQUEST" in
                        d.find_element(By.ID, "csr_pem").get_attribute("value"))
        self.type("#contact", "dev@initech.example")
        self.type("#description", "order sync")
        self.click("#enrol")
        status = self.text("#status")
        self.expect(status == "pending", f"enrolment status {status!r}")
        self.screenshot("enrolment-pending")

        # The approver signs in with the admin token and approves from the pending list.
        self.open("/portal/approver")
        self.screenshot("approver-sign-in")
        self.sign_in("carol")
        pending = self.text("#pending-initech")
        self.expect("URI:spiffe://partners.example.com/initech" in pending and "ECDSA P-256" in pending,
                    f"the pending request lacks the CSR's details: {pending}")
        self.screenshot("approver-pending")
        self.click("#approve-initech")
        result = self.text("#result")
        self.expect("Approved initech" in result, f"approval: {result}")
        self.screenshot("approved")

        # The partner's developer downloads the certificate and chain.
        self.open("/portal/enrolment")
        status = self.text("#status")
        self.expect(status == "issued", f"enrolment status {status!r} after approval")
        self.screenshot("enrolment-issued")
        self.click("#download")
        pem = os.path.join(self.downloads, "initech.pem")
        deadline = time.monotonic() + 20
        while not (os.path.exists(pem) and open(pem).read().count("END CERTIFICATE") == 2):
            if time.monotonic() > deadline:
                fail(f"no certificate downloaded into {self.downloads}: {os.listdir(self.downloads)}")
            time.sleep(0.2)
        cert = os.path.join(a.out, "initech.pem")
        shutil.copy(pem, cert)
        print(f"downloaded {cert}")

        # curl calls the sandbox route through the gateway to the upstream; production is refused.
        self.until("/sandbox/orders/1", cert, a.key, lambda c: c == "200", "200 on the sandbox")
        got = self.call("/v1/orders/1", cert, a.key)
        self.expect(got == "403", f"production before promotion: {got}")

        # Promotion is refused with its reason until the sandbox calls reach the threshold.
        self.open("/portal/approver")
        self.click("#promote-initech")
        result = self.text("#result")
        self.expect(self.text("h1") == "Refused" and a.refusal in result,
                    f"promotion should be refused with {a.refusal!r}: {result}")
        self.screenshot("promote-refused")
        for _ in range(a.min_calls):
            got = self.call("/sandbox/orders/1", cert, a.key)
            self.expect(got == "200", f"a sandbox call: {got}")
        # The partner's view shows the count once the gateway has written it (every 10 s).
        deadline = time.monotonic() + 40
        while True:
            self.open("/portal/enrolment")
            counted = self.text("#calls-0")
            if int(counted.split()[0]) >= a.min_calls:
                break
            if time.monotonic() > deadline:
                fail(f"the sandbox calls were never counted: {counted}")
            time.sleep(1)
        self.screenshot("enrolment-calls-counted")
        self.open("/portal/approver")
        calls = self.text("#sandbox-calls-initech")
        self.expect(f"of {a.min_calls}" in calls, f"the approver's view of the sandbox calls: {calls}")
        self.screenshot("approver-before-promote")
        self.click("#promote-initech")
        result = self.text("#result")
        self.expect("Promoted initech to production" in result, f"promotion: {result}")
        self.screenshot("promoted")
        self.until("/v1/orders/1", cert, a.key, lambda c: c == "200", "200 in production")

        # One-click revoke with a reason; the gateway refuses the certificate from then on.
        self.open("/portal/approver")
        Select(self.driver.find_element(By.ID, "revoke-reason-initech")).select_by_value("keyCompromise")
        self.screenshot("approver-before-revoke")
        self.click("#revoke-initech")
        result = self.text("#result")
        self.expect("Revoked the certificates of initech (keyCompromise)" in result, f"revoke: {result}")
        self.screenshot("revoked")
        self.until("/sandbox/orders/1", cert, a.key, lambda c: c != "200", "refused after revocation")

        self.open("/portal/enrolment")
        reason = self.text("#reason")
        self.expect("keyCompromise" in reason, f"the partner's view after revocation: {reason}")
        self.screenshot("enrolment-revoked")
        self.open("/portal/approver/partners/initech")
        history = self.text("#history")
        for line in ["enrol", "approve", "promote", "revoke"]:
            self.expect(line in history, f"history lacks {line}: {history}")
        self.screenshot("history")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--params", required=True, help="JSON file with the scenario's parameters")
    params = json.load(open(p.parse_args().params))
    args = argparse.Namespace(**params)
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            fail(f"{binary} is missing: apt-get install chromium chromium-driver (.ci/run does)")
    os.makedirs(args.screenshots, exist_ok=True)
    scenario = Scenario(args)
    started = time.monotonic()
    try:
        scenario.run()
    finally:
        scenario.close()
    print(f"portal browser scenario passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
