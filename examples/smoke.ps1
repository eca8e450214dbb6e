<#
.SYNOPSIS
    End-to-end smoke test of queuectl from PowerShell: Windows PowerShell 5.1 and pwsh 7.

.DESCRIPTION
    Runs the original QueueCTL PowerShell test table against a temporary data folder:
    a valid job, a failing job that reaches the DLQ after its attempts, three jobs in
    parallel with three workers, a DLQ retry, `wait` exit codes, and a config change.
    Every check uses $LASTEXITCODE or --json output and prints PASS or FAIL; the script
    exits 1 if any check failed.

    Only quoting that works in every PowerShell version is used: --id/--command flags,
    --file (written by ConvertTo-Json | Out-File, UTF-16 in 5.1), and a pipe to stdin.
    No JSON is passed as a command-line argument.

    From the repository root:
        powershell -NoProfile -ExecutionPolicy Bypass -File examples\smoke.ps1
        pwsh -NoProfile -File examples/smoke.ps1

.PARAMETER Python
    The Python to run queuectl.py with (default: python, else python3, else py).
#>
param([string]$Python = "")

$ErrorActionPreference = "Continue"  # native stderr must not become a terminating error (5.1)

$Root = Split-Path -Parent $PSScriptRoot
$Queuectl = Join-Path $Root "queuectl.py"
if (-not $Python) {
    foreach ($candidate in "python", "python3", "py") {
        if (Get-Command $candidate -ErrorAction SilentlyContinue) { $Python = $candidate; break }
    }
}
if (-not $Python) { Write-Host "FAIL  no python found on PATH"; exit 1 }

# The shell the timed jobs run in: the PowerShell running this script (Start-Sleep exists in both).
$PsShell = if ($PSVersionTable.PSEdition -eq "Core") { "pwsh" } else { "powershell" }

$Data = Join-Path ([IO.Path]::GetTempPath()) ("queuectl-smoke-" + [Guid]::NewGuid().ToString("N"))
New-Item -ItemType Directory -Path $Data | Out-Null
$env:QUEUECTL_HOME = $Data
$env:PYTHONIOENCODING = "utf-8"
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }

$script:Failures = 0
$script:Code = 0

# Run queuectl; its stdout lines are returned, its exit code is left in $script:Code.
function Q {
    $out = & $Python $Queuectl @args
    $script:Code = $LASTEXITCODE
    return $out
}

# Run queuectl with --json and parse what it printed. An array comes out one element at a
# time (5.1's ConvertFrom-Json emits it as one object; returning the variable unrolls it).
function QJson {
    $text = (Q @args --json) -join "`n"
    if ($script:Code -ne 0 -or -not $text) { return $null }
    $parsed = ConvertFrom-Json -InputObject $text
    return $parsed
}

function Check([string]$Name, [bool]$Ok, [string]$Detail = "") {
    if ($Ok) {
        Write-Host "PASS  $Name"
    } else {
        Write-Host "FAIL  $Name $Detail"
        $script:Failures++
    }
}

Write-Host "queuectl smoke test: $($PSVersionTable.PSEdition) PowerShell $($PSVersionTable.PSVersion), $Python, data in $Data"

try {
    # 1. A config change, read back as JSON; a bad value is refused.
    Q config set max-retries 2 | Out-Null
    Check "config set max-retries 2" ($script:Code -eq 0)
    Q config set backoff-base 1 | Out-Null
    $value = QJson config get max_retries
    Check "config get max_retries --json is 2" ($value -eq 2) "got '$value'"
    Q config set max-retries many 2>$null | Out-Null
    Check "config set max-retries many exits 1" ($script:Code -eq 1) "exit $($script:Code)"

    # 2. A valid job and a failing job (both commands work in cmd.exe and in /bin/sh).
    Q enqueue --id ok1 --command "echo hello" | Out-Null
    Check "enqueue --id ok1 --command" ($script:Code -eq 0) "exit $($script:Code)"
    Q enqueue --id bad1 --command "exit 3" | Out-Null
    Check "enqueue --id bad1 --command 'exit 3'" ($script:Code -eq 0) "exit $($script:Code)"
    Q enqueue --id ok1 --command "echo again" 2>$null | Out-Null
    Check "a taken id is refused with exit 1" ($script:Code -eq 1) "exit $($script:Code)"
    Q worker start --count 1 --burst | Out-Null
    Check "worker start --burst exits 0" ($script:Code -eq 0) "exit $($script:Code)"
    $job = QJson show ok1
    Check "ok1 is completed" ($job -and $job.state -eq "completed") "state '$($job.state)'"
    $job = QJson show bad1
    Check "bad1 is dead after 2 attempts" ($job -and $job.state -eq "dead" -and $job.attempts -eq 2) `
        "state '$($job.state)', attempts $($job.attempts)"
    $dlq = @(QJson dlq list)
    Check "dlq list --json holds bad1" (@($dlq | Where-Object { $_.id -eq "bad1" }).Count -eq 1)
    $log = (Q logs bad1) -join "`n"
    Check "logs bad1 shows both attempts" ($log -match "attempt 1," -and $log -match "attempt 2,")

    # 3. Three jobs in parallel with three workers, enqueued from a file PowerShell wrote.
    $file = Join-Path $Data "jobs.json"
    $jobs = foreach ($n in 1..3) { @{ id = "p$n"; command = "Start-Sleep -Seconds 2"; shell = $PsShell } }
    ConvertTo-Json -InputObject @($jobs) | Out-File -FilePath $file -Encoding unicode
    Q enqueue --file $file | Out-Null
    Check "enqueue --file (UTF-16, as Out-File writes it)" ($script:Code -eq 0) "exit $($script:Code)"
    $clock = [Diagnostics.Stopwatch]::StartNew()
    Q worker start --count 3 --burst | Out-Null
    $seconds = $clock.Elapsed.TotalSeconds
    $done = @(QJson list --state completed | Where-Object { $_.id -like "p*" })
    Check "3 workers ran 3 jobs of 2 s" ($done.Count -eq 3) "$($done.Count) completed"
    Check "they ran in parallel (under 5.5 s, not 6+)" ($seconds -lt 5.5) ("took {0:N1} s" -f $seconds)

    # 4. A job from stdin, a DLQ retry, and `wait` with a worker in the background.
    # (Piped straight to python: input piped to a function would not reach its stdin.)
    '{"id":"stdin1","command":"echo from stdin"}' | & $Python $Queuectl enqueue --file - | Out-Null
    Check "enqueue from stdin" ($LASTEXITCODE -eq 0) "exit $LASTEXITCODE"
    Q dlq retry bad1 | Out-Null
    $job = QJson show bad1
    Check "dlq retry bad1: pending, attempts 0" ($job -and $job.state -eq "pending" -and $job.attempts -eq 0) `
        "state '$($job.state)'"
    $worker = Start-Process -FilePath $Python -ArgumentList "`"$Queuectl`"", "worker", "start", "--count", "2" `
        -NoNewWindow -PassThru -RedirectStandardOutput (Join-Path $Data "worker.out")
    Q wait stdin1 --timeout 60 | Out-Null
    Check "wait stdin1 exits 0 (completed)" ($script:Code -eq 0) "exit $($script:Code)"
    Q wait bad1 --timeout 60 | Out-Null
    Check "wait bad1 exits 1 (dead again)" ($script:Code -eq 1) "exit $($script:Code)"
    Q enqueue --id later --command "echo later" --delay 1h | Out-Null
    Q wait later --timeout 1 | Out-Null
    Check "wait on a job scheduled in an hour times out with 124" ($script:Code -eq 124) "exit $($script:Code)"
    Q cancel later | Out-Null
    Check "cancel later" ($script:Code -eq 0) "exit $($script:Code)"
    Q worker stop --wait | Out-Null
    Check "worker stop --wait" ($script:Code -eq 0) "exit $($script:Code)"
    Check "the background worker exited" ($worker.WaitForExit(10000))

    # 5. The counts, as a script would check them.
    $status = QJson status
    $counts = if ($status) { $status.counts } else { $null }
    Check "status --json: 5 completed, 1 dead, 1 cancelled, nothing active" ($counts -and `
        $counts.completed -eq 5 -and $counts.dead -eq 1 -and $counts.cancelled -eq 1 -and `
        $counts.pending -eq 0 -and $counts.processing -eq 0 -and $counts.failed -eq 0) ($status | ConvertTo-Json -Compress)
    Q config set max-retries 5 | Out-Null
    Check "config change is read back" ((QJson config get max-retries) -eq 5)
} finally {
    Remove-Item -Recurse -Force $Data -ErrorAction SilentlyContinue
}

if ($script:Failures) {
    Write-Host "$($script:Failures) check(s) FAILED"
    exit 1
}
Write-Host "All checks passed."
exit 0
