// Progressive enhancements only: every form works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // A CSR file chosen in the enrolment form is read into the PEM field that the form submits.
  var file = document.getElementById("csr_file");
  var pem = document.getElementById("csr_pem");
  if (file && pem) {
    file.addEventListener("change", function () {
      if (!file.files || !file.files[0]) { return; }
      file.files[0].text().then(function (text) { pem.value = text; });
    });
  }
  // A copy button above each command.
  if (navigator.clipboard) {
    document.querySelectorAll("pre.cmd").forEach(function (pre) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy secondary";
      button.textContent = "Copy";
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(pre.innerText).then(function () {
          button.textContent = "Copied";
        });
      });
      pre.parentNode.insertBefore(button, pre);
    });
  }
});
