package OpAMPFleet;

# Simulated OpAMP agents over WebSocket for the tests: a minimal RFC 6455
# client (masked frames, the OpAMP header byte 0) that can hold many
# connections at once.  Messages are encoded with protoc (an independent
# codec): a template is encoded once and the 16 uid bytes are replaced per
# agent, which keeps a fleet of a thousand agents cheap to set up.

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Digest::SHA qw(sha1_base64);
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time);
use File::Temp qw(tempfile);
use File::Basename qw(dirname);
use Cwd qw(abs_path);

our $PLACEHOLDER = 'UUUUUUUUUUUUUUUU';

my $ROOT = abs_path(dirname(__FILE__) . '/../..');

sub proto_args {
    return ('-I', "$ROOT/proto", 'opamp/v1/opamp.proto');
}

# protoc --encode of a text-format message of type $type
sub encode {
    my ($type, $text) = @_;
    my ($fh, $in) = tempfile(UNLINK => 1);
    print $fh $text;
    close $fh;
    my @args = proto_args();
    my $out = `protoc --encode=opamp.proto.v1.$type @args < $in`;
    die "protoc --encode $type failed for: $text\n" if $?;
    return $out;
}

# protoc --decode, text format
sub decode {
    my ($type, $bytes) = @_;
    my ($fh, $in) = tempfile(UNLINK => 1);
    binmode $fh;
    print $fh $bytes;
    close $fh;
    my @args = proto_args();
    my $out = `protoc --decode=opamp.proto.v1.$type @args < $in`;
    die "protoc --decode $type failed\n" if $?;
    return $out;
}

# the textproto escape of 16 uid bytes
sub uid_escape {
    return join '', map { sprintf '\\%03o', $_ } unpack 'C*', shift;
}

sub uid_text {
    my $h = unpack 'H*', shift;
    return join '-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4),
        substr($h, 16, 4), substr($h, 20);
}

sub random_uid {
    return join '', map { chr(int rand 256) } 1 .. 16;
}

# encodes an AgentToServer template whose instance_uid is the placeholder;
# with_uid() then makes the message of any agent
sub template {
    my ($text) = @_;
    return encode('AgentToServer',
                  'instance_uid: "' . $PLACEHOLDER . '" ' . $text);
}

sub with_uid {
    my ($template, $uid) = @_;
    my $m = $template;
    my $i = index($m, $PLACEHOLDER);
    die "no uid placeholder in template\n" if $i < 0;
    substr($m, $i, 16) = $uid;
    return $m;
}

# --- one WebSocket agent ---------------------------------------------------

# %o: port, host, local (address), path, headers ({ name => value }),
# refused (return the head of a refused handshake instead of dying)
sub connect_ws {
    my ($class, %o) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => $o{host} // '127.0.0.1',
                                  PeerPort => $o{port}, Proto => 'tcp',
                                  Timeout => 5,
                                  $o{local} ? (LocalAddr => $o{local}) : ())
        or die "connect to port $o{port}: $!\n";
    $s->autoflush(1);
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    binmode $s;

    my $key = encode_base64(join('', map { chr(int rand 256) } 1 .. 16), '');
    my $path = $o{path} // '/v1/opamp';
    syswrite($s, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 . "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 . "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: $key\r\n"
                 . join('', map { "$_: $o{headers}{$_}\r\n" }
                                sort keys %{ $o{headers} // {} })
                 . "\r\n");

    my $self = bless { sock => $s, buf => '', key => $key }, $class;
    my $head = $self->_read_head(5) // die "no handshake answer\n";
    # refused: the status line, for a test of the refusal (refused => 1)
    return $head if $o{refused} && $head !~ m{^HTTP/1\.1 101};
    die "handshake failed: $head\n" unless $head =~ m{^HTTP/1\.1 101};
    my $accept = sha1_base64($key . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
                 . '=';
    die "bad Sec-WebSocket-Accept\n"
        unless $head =~ /^Sec-WebSocket-Accept:\s*\Q$accept\E\r?$/mi;
    return $self;
}

sub sock { $_[0]{sock} }

sub _read_head {
    my ($self, $t) = @_;
    my $sel = IO::Select->new($self->{sock});
    my $deadline = time + $t;
    while ($self->{buf} !~ /\r\n\r\n/) {
        my $left = $deadline - time;
        return undef if $left <= 0 || !$sel->can_read($left);
        my $n = sysread($self->{sock}, $self->{buf}, 65536,
                        length $self->{buf});
        return undef unless $n;
    }
    my ($head, $rest) = split /\r\n\r\n/, $self->{buf}, 2;
    $self->{buf} = $rest // '';
    return $head;
}

sub frame {
    my ($op, $payload) = @_;
    my $len = length $payload;
    my $h = chr(0x80 | $op);
    if ($len < 126) { $h .= chr(0x80 | $len) }
    elsif ($len < 65536) { $h .= chr(0x80 | 126) . pack('n', $len) }
    else { $h .= chr(0x80 | 127) . pack('Q>', $len) }
    my $k = join '', map { chr(int rand 256) } 1 .. 4;
    my $mk = substr($k x (int($len / 4) + 1), 0, $len);
    return $h . $k . ($payload ^ $mk);
}

# sends one AgentToServer (binary frame, header byte 0)
sub send_msg {
    my ($self, $bytes) = @_;
    my $f = frame(2, "\x00" . $bytes);
    my $off = 0;
    while ($off < length $f) {
        my $n = syswrite($self->{sock}, $f, length($f) - $off, $off);
        die "write: $!\n" unless defined $n;
        $off += $n;
    }
}

# parses one whole frame out of the buffer: (opcode, payload) or ()
sub _take_frame {
    my ($self) = @_;
    my $b = \$self->{buf};
    return () if length $$b < 2;
    my ($b0, $b1) = unpack 'CC', $$b;
    my $len = $b1 & 0x7f;
    my $off = 2;
    if ($len == 126) {
        return () if length $$b < 4;
        $len = unpack 'n', substr($$b, 2, 2);
        $off = 4;
    } elsif ($len == 127) {
        return () if length $$b < 10;
        $len = unpack 'Q>', substr($$b, 2, 8);
        $off = 10;
    }
    return () if length $$b < $off + $len;
    my $p = substr($$b, $off, $len);
    substr($$b, 0, $off + $len) = '';
    return ($b0 & 0x0f, $p);
}

# reads data frames until one OpAMP message arrives: its protobuf bytes,
# or undef on timeout, close or EOF (then ->{closed} holds the close code)
sub recv_msg {
    my ($self, $t) = @_;
    $t //= 5;
    my $sel = IO::Select->new($self->{sock});
    my $deadline = time + $t;
    for (;;) {
        while (my ($op, $p) = $self->_take_frame) {
            if ($op == 2) {
                die "OpAMP header is not 0\n" unless substr($p, 0, 1) eq "\x00";
                return substr($p, 1);
            }
            if ($op == 8) {
                $self->{closed} = length $p >= 2 ? unpack('n', $p) : 1005;
                return undef;
            }
            if ($op == 9) {
                syswrite($self->{sock}, frame(10, $p));
            }
        }
        my $left = $deadline - time;
        return undef if $left <= 0 || !$sel->can_read($left);
        my $n = sysread($self->{sock}, $self->{buf}, 65536,
                        length $self->{buf});
        if (!$n) {
            $self->{closed} //= 'eof';
            return undef;
        }
    }
}

# feeds bytes that arrived for this agent (for a fleet read loop)
sub feed {
    my ($self) = @_;
    my $n = sysread($self->{sock}, $self->{buf}, 65536, length $self->{buf});
    return $n;
}

# all whole OpAMP messages buffered now
sub drain {
    my ($self) = @_;
    my @m;
    while (my ($op, $p) = $self->_take_frame) {
        push @m, substr($p, 1) if $op == 2;
        syswrite($self->{sock}, frame(10, $p)) if $op == 9;
    }
    return @m;
}

sub close {
    my ($self) = @_;
    syswrite($self->{sock}, frame(8, pack('n', 1000)));
    close $self->{sock};
}

# --- what a change sent each agent, proven by a barrier ----------------------

# The config hashes (hex, comma-separated; '' for none) each WebSocket
# agent of %$agents received for the change just made.  What "nothing"
# means is proven, not waited for: a custom message of the capability
# io.example.barrier, which each agent must declare, is queued for every
# agent and the fleet told; that message comes without a change of
# config_version, so every worker has Redis check each agent it holds,
# and whatever the change sent an agent arrives before (or with) the
# barrier on its connection.  $t: the OpAMPTest; $prefix: the key prefix;
# $n: this barrier's number, unique in the test.
sub barrier_received {
    my ($t, $prefix, $agents, $n) = @_;
    for my $name (sort keys %$agents) {
        $t->redis('RPUSH', $prefix . 'outbox:{'
                  . uid_text($agents->{$name}{uid}) . '}',
                  "io.example.barrier\nb\n$n");
    }
    $t->redis('PUBLISH', "${prefix}fleet", 'config');
    my %got;
    for my $name (sort keys %$agents) {
        my @h;
        for (1 .. 5) {
            my $m = $agents->{$name}->recv_msg(10);
            last unless defined $m;
            my $text = decode('ServerToAgent', $m);
            my ($h) = $text =~ /config_hash: "((?:[^"\\]|\\.)*)"/;
            push @h, unpack('H*', OpAMPTest::_unescape($h)) if defined $h;
            last if $text =~ /data: "\Q$n\E"/;
        }
        $got{$name} = join ',', @h;
    }
    return \%got;
}

# --- SHA-256 config_hash as docs/redis-schema.md defines it ---------------

sub config_hash {
    my (%files) = @_;    # name => [body, content_type]
    my $data = '';
    for my $name (sort keys %files) {
        my ($body, $type) = @{ $files{$name} };
        $type //= '';
        $data .= pack('N', length $name) . $name
                 . pack('N', length $type) . $type
                 . pack('Q>', length $body) . $body;
    }
    return Digest::SHA::sha256_hex($data);
}

1;
