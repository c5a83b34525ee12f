# Build dist\connector-proxy.exe on Windows: the PowerShell twin of
# scripts/build-binary.sh (same PyInstaller command, same exclusions; see the
# comments there).  Needs the connector's dependencies and PyInstaller:
#     py -m pip install '.[binary]'
# Not run in CI: there is no Windows machine there (docs/binary.md).
$ErrorActionPreference = "Stop"
Set-Location (Split-Path -Parent $PSScriptRoot)
$python = if ($env:PYTHON) { $env:PYTHON } else { "py" }

& $python -m PyInstaller --noconfirm --clean --log-level WARN `
    --onefile --name connector-proxy `
    --distpath dist --workpath build/pyinstaller --specpath build/pyinstaller `
    --paths . `
    --exclude-module setuptools --exclude-module pkg_resources --exclude-module distutils `
    --exclude-module tkinter --exclude-module twisted.trial `
    scripts/connector-proxy-entry.py
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
Get-Item dist\connector-proxy.exe
