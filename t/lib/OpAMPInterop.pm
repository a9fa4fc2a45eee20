package OpAMPInterop;

# Real OpAMP clients as child processes of a test (t/9x-interop-*.t):
# where their programs are, whether the machine can have them, and a
# process handle that reads the client's stdout line by line with bounded
# waits.  Only core Perl.
#
#   my $bin = OpAMPInterop::need('opampgo-agent');  # path, or skip_all
#   my $p = OpAMPInterop->spawn([$bin, @args], log => "$dir/logs/a.log");
#   my $line = $p->expect(qr/^connected$/, 10);   # undef on timeout
#   $p->send("stop");  $p->stop;                  # TERM, then KILL
#
# The programs are built by `make interop-tools` into build/interop/ (see
# the README).  A test skips only where the toolchain is missing (no Go
# of the version t/interop needs, or no python3-venv) or the registry
# could not be reached (build/interop/skip-go, skip-python, written by
# make): it says what it skipped and how to run it.  Where the toolchain
# is there and a program is not, the test fails: it never skips silently.

use strict;
use warnings;

use Test::More;
use IO::Select;
use POSIX qw(WNOHANG);
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use Time::HiRes qw(time sleep);

my $ROOT = abs_path(dirname(abs_path(__FILE__)) . '/../..');

# the Go version the modules under t/interop need (the supervisor's go.mod
# asks for the most)
our $GO_MIN = '1.25';

sub root { $ROOT }
sub bin_dir { "$ROOT/build/interop/bin" }

# (major, minor) of `go version`, or () without Go
sub go_version {
    my $v = `go version 2>/dev/null` // '';
    return $v =~ /go(\d+)\.(\d+)/ ? ($1, $2) : ();
}

sub have_go {
    my @v = go_version();
    my ($maj, $min) = split /\./, $GO_MIN;
    return @v && ($v[0] > $maj || ($v[0] == $maj && $v[1] >= $min));
}

# the path of a program built by `make interop-tools`; skips the whole
# test when the machine has no toolchain for it ($kind: 'go' or
# 'python'), fails it when the toolchain is there but the program is not
sub need {
    my ($name, $kind) = @_;
    $kind //= 'go';
    my $path = $name =~ m{/} ? $name : bin_dir() . "/$name";
    return $path if -x $path;

    # make interop-tools found no toolchain or no registry, and said so
    if (open my $f, '<', "$ROOT/build/interop/skip-$kind") {
        my $why = <$f> // '';
        chomp $why;
        plan skip_all => "SKIPPED: $name: $why; see README.md "
                         . '(make test-interop)';
    }

    my $have = $kind eq 'go' ? have_go()
             : system('python3 -c "import venv, ensurepip" 2>/dev/null')
               == 0;
    if (!$have) {
        my $what = $kind eq 'go'
                   ? "Go $GO_MIN or newer (go version: "
                     . (join('.', go_version()) || 'none') . ')'
                   : 'python3 with venv and ensurepip (python3-venv)';
        plan skip_all => "SKIPPED: $name needs $what; install it and run "
                         . "`make test-interop` (see README.md)";
    }
    BAIL_OUT("$path is missing although $kind is installed: run "
             . "`make interop-tools` (make test does)");
}

# the collectors ($otelcol, the program's path) started from a
# supervisor's storage directory $dir that still run (the supervisor
# stops its collector on SIGINT; after anything else they are left to
# their own orphan detection): stopped by their pids, found in /proc
sub stop_collectors {
    my ($otelcol, $dir) = @_;
    for my $p (glob '/proc/[0-9]*') {
        open my $f, '<', "$p/cmdline" or next;
        my $cl = <$f> // '';
        next unless $cl =~ /\Q$otelcol\E/ && $cl =~ /\Q$dir\E/;
        my ($pid) = $p =~ /(\d+)$/;
        kill 'TERM', $pid;
    }
}

# a random version 4 UUID as text, as the supervisor keeps its
# instance_id in persistent_state.yaml
sub uuid4 {
    my $h = '';
    $h .= sprintf '%02x', int rand 256 for 1 .. 16;
    substr($h, 12, 1) = '4';
    return join '-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4),
        substr($h, 16, 4), substr($h, 20);
}

# --- a child process with its stdout read line by line ------------------

# $cmd: array ref; %o: log (stderr, default /dev/null), env (hash ref)
sub spawn {
    my ($class, $cmd, %o) = @_;
    pipe(my $in_r, my $in_w) or die "pipe: $!\n";
    pipe(my $out_r, my $out_w) or die "pipe: $!\n";
    my $pid = fork() // die "fork: $!\n";
    if ($pid == 0) {
        close $in_w;
        close $out_r;
        open STDIN, '<&', $in_r or POSIX::_exit(127);
        open STDOUT, '>&', $out_w or POSIX::_exit(127);
        open STDERR, '>>', $o{log} // '/dev/null' or POSIX::_exit(127);
        if ($o{env}) {
            $ENV{$_} = $o{env}{$_} for keys %{ $o{env} };
        }
        chdir $o{dir} if $o{dir};
        exec @$cmd or POSIX::_exit(127);
    }
    close $in_r;
    close $out_w;
    my $old = select $in_w;
    $| = 1;
    select $old;
    return bless { pid => $pid, in => $in_w, out => $out_r, buf => '',
                   lines => [], next => 0, owner => $$, cmd => $cmd },
        $class;
}

sub pid { $_[0]{pid} }

# every line the process printed so far
sub lines {
    my ($self) = @_;
    $self->_pump(0);
    return @{ $self->{lines} };
}

# reads what is there, waiting at most $wait seconds for something
sub _pump {
    my ($self, $wait) = @_;
    return 0 unless $self->{out};
    my $sel = IO::Select->new($self->{out});
    my $got = 0;
    while ($sel->can_read($got ? 0 : $wait)) {
        my $n = sysread($self->{out}, $self->{buf}, 65536,
                        length $self->{buf});
        if (!$n) {
            close $self->{out};
            delete $self->{out};
            last;
        }
        $got = 1;
        while ($self->{buf} =~ s/^([^\n]*)\n//) {
            push @{ $self->{lines} }, $1;
            diag("  [$self->{pid}] $1") if $ENV{TEST_VERBOSE};
        }
    }
    return $got;
}

# the next line (after the last one expect() returned) that matches $re,
# waiting at most $secs (default 10); undef when none came in time.  In
# list context, the regex captures.
sub expect {
    my ($self, $re, $secs) = @_;
    my $deadline = time + ($secs // 10);
    for (;;) {
        my $l = $self->{lines};
        while ($self->{next} < @$l) {
            my $line = $l->[ $self->{next}++ ];
            if (my @c = $line =~ $re) {
                return wantarray ? @c : $line;
            }
        }
        my $left = $deadline - time;
        return wantarray ? () : undef if $left <= 0;
        if (!$self->_pump($left > 0.2 ? 0.2 : $left) && !$self->{out}) {
            return wantarray ? () : undef;
        }
    }
}

# how many of the lines so far match $re
sub count {
    my ($self, $re) = @_;
    return scalar grep { $_ =~ $re } $self->lines;
}

sub send {
    my ($self, $text) = @_;
    return unless $self->{in};
    local $SIG{PIPE} = 'IGNORE';
    print { $self->{in} } "$text\n";
}

# true while the process runs
sub alive {
    my ($self) = @_;
    return 0 unless $self->{pid};
    my $r = waitpid($self->{pid}, WNOHANG);
    if ($r == $self->{pid} || $r < 0) {
        $self->{status} = $?;
        delete $self->{pid};
        return 0;
    }
    return 1;
}

# waits (bounded) for the process to exit by itself; true if it did
sub wait_exit {
    my ($self, $secs) = @_;
    my $deadline = time + ($secs // 10);
    while (time < $deadline) {
        return 1 unless $self->alive;
        $self->_pump(0.1);
    }
    return !$self->alive;
}

# TERM (or $sig), then KILL after $secs (default 10); always reaped
sub stop {
    my ($self, $sig, $secs) = @_;
    return unless ($self->{owner} // 0) == $$;
    if (my $pid = $self->{pid}) {
        kill $sig // 'TERM', $pid;
        $self->wait_exit($secs // 10) or do {
            kill 'KILL', $pid;
            $self->wait_exit(5);
        };
    }
    close $self->{in} if $self->{in};
    delete $self->{in};
    $self->_pump(0);
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $@, $!);
    $self->stop('KILL', 5) if $self->{pid};
}

1;
