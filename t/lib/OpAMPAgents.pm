package OpAMPAgents;

# A fleet of simulated OpAMP agents over WebSocket for the rollout tests
# (t/75, t/77): each connects with a description, answers every config it
# is offered with APPLIED, or FAILED for a hash the test says it fails,
# and connects again when its connection ends (a reload, a failover),
# going on counting its sequence numbers as OpAMP clients do.  As OpAMP
# clients do too, an agent sends its last report again (a moment later)
# when the server answers it UNAVAILABLE, as during a Redis failover, and
# its full state, with its last config status, when the server asks for
# it (ReportFullState).  What they
# receive is decoded with protoc (an independent codec), a round's
# messages in one call.  Each agent notes the config hashes it received
# and when.

use strict;
use warnings;

use IO::Select;
use Digest::SHA qw(sha1_hex);
use File::Temp qw(tempdir);
use Time::HiRes qw(time);
use Test::More;

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';

# the rank of a uid in staged rollouts (docs/redis-schema.md, "Rank"),
# computed here on its own
sub rank { hex substr(sha1_hex(OpAMPFleet::uid_text($_[0])), 0, 8) }

# (t: the OpAMPTest whose Redis holds the agents; hello: the text of an
# agent's first message after its sequence number; ->{fallback}: the
# OpAMPTest an agent connects to when its own nginx refuses)
sub new {
    my ($class, %o) = @_;
    my $self = bless { t => $o{t}, hello => $o{hello}, agents => [],
                       fails => {}, template => {} }, $class;
    # one protoc call decodes a round's messages: a message of their
    # repeated field, written here byte by byte
    $self->{pdir} = tempdir(CLEANUP => 1);
    open my $f, '>', "$self->{pdir}/batch.proto" or die;
    print $f "syntax = \"proto3\";\nimport \"opamp/v1/opamp.proto\";\n"
             . "message Batch { repeated opamp.proto.v1.ServerToAgent m = 1; }\n";
    close $f;
    return $self;
}

sub agents { $_[0]{agents} }
sub fails { $_[0]{fails} }

sub varint {
    my ($n) = @_;
    my $s = '';
    while ($n >= 0x80) { $s .= chr(($n & 0x7f) | 0x80); $n >>= 7 }
    return $s . chr($n);
}

sub decode_batch {
    my ($self, @msgs) = @_;
    my $bytes = join '', map { "\x0a" . varint(length $_) . $_ } @msgs;
    my $in = "$self->{pdir}/in";
    open my $f, '>', $in or die;
    binmode $f;
    print $f $bytes;
    close $f;
    my $root = OpAMPTest::root();
    my $out = `protoc --decode=Batch -I $self->{pdir} -I $root/proto batch.proto < $in`;
    die "protoc --decode Batch failed\n" if $?;
    my @texts = split /^m \{\n/m, $out;
    shift @texts;
    die "decoded " . scalar(@texts) . " of " . scalar(@msgs) . "\n"
        unless @texts == @msgs;
    return @texts;
}

sub a2s_of {
    my ($self, $ag, $text) = @_;
    my $k = "$ag->{seq} $text";
    $self->{template}{$k} //= OpAMPFleet::template("sequence_num: $ag->{seq} $text");
    return OpAMPFleet::with_uid($self->{template}{$k}, $ag->{uid});
}

# a new agent counts from 0; one that reconnects goes on counting, so
# that the new connection takes the agent over even while the old one is
# still held (docs/redis-schema.md, "Duplicate instance UIDs")
sub hello {
    my ($self, $ag) = @_;
    $ag->{ws} = OpAMPFleet->connect_ws(port => $ag->{t}->port);
    $ag->{seq} = defined $ag->{seq} ? $ag->{seq} + 1 : 0;
    $ag->{ws}->send_msg($self->a2s_of($ag, $self->{hello}));
}

# an agent connected to the nginx of OpAMPTest $t (a random uid unless
# given)
sub add {
    my ($self, $t, $uid) = @_;
    my $ag = { t => $t, uid => $uid // OpAMPFleet::random_uid(), got => [] };
    $ag->{rank} = rank($ag->{uid});
    $self->hello($ag);
    push @{ $self->{agents} }, $ag;
    return $ag;
}

# the remote config status an agent reports for hash $h: APPLIED, or
# FAILED for a hash the agent fails
sub config_status {
    my ($self, $ag, $h) = @_;
    my $f = $self->{fails}{$h};
    my $st = $f && $f->{$ag->{uid}} ? 'FAILED' : 'APPLIED';
    return 'remote_config_status { last_remote_config_hash: "'
           . OpAMPFleet::uid_escape(pack 'H*', $h)
           . "\" status: RemoteConfigStatuses_$st"
           . ($st eq 'FAILED' ? ' error_message: "bad config"' : '') . ' }';
}

# answers an offer
sub answer {
    my ($self, $ag, $h) = @_;
    $ag->{last} = $h;
    $ag->{seq}++;
    $ag->{ws}->send_msg($self->a2s_of($ag, 'capabilities: 3 '
                                      . $self->config_status($ag, $h)));
}

# what an agent does with a message that carries no config: an error
# UNAVAILABLE has it send its last report again half a second later; a
# request for its full state has it send its description and its last
# config status
sub on_message {
    my ($self, $ag, $text) = @_;
    if ($text =~ /^\s*type: ServerErrorResponseType_Unavailable/m) {
        $ag->{retry_at} //= time + 0.5 if defined $ag->{last};
    } elsif ($text =~ /^\s*flags: (\d+)/m && $1 & 1) {
        $ag->{seq}++;
        $ag->{ws}->send_msg($self->a2s_of($ag, $self->{hello}
            . (defined $ag->{last}
               ? ' ' . $self->config_status($ag, $ag->{last}) : '')));
    }
}

# reads what arrived for a while, answers the offers, connects again the
# agents whose connection ended; stops early when $done says so
sub pump {
    my ($self, $secs, $done) = @_;
    my $deadline = time + $secs;
    my @agents = @{ $self->{agents} };
    while (time < $deadline) {
        return 1 if $done && $done->();
        for my $ag (grep { $_->{retry_at} && $_->{retry_at} <= time }
                    @agents)
        {
            delete $ag->{retry_at};
            $self->answer($ag, $ag->{last}) if $ag->{ws};
        }
        my $sel = IO::Select->new(map { $_->{ws}->sock } @agents);
        my %by = map { ($_->{ws}->sock => $_) } @agents;
        my @ready = $sel->can_read(0.2);
        my (@msgs, @who);
        for my $s (@ready) {
            my $ag = $by{$s};
            my $n = $ag->{ws}->feed;
            my @m = $ag->{ws}->drain;
            push @msgs, @m;
            push @who, ($ag) x @m;
            if (!$n) {
                $ag->{reconnects}++;
                # its nginx gone for good: to the one that remains
                eval { $self->hello($ag); 1 }
                    or ($self->{fallback}
                        and $ag->{t} = $self->{fallback}
                        and eval { $self->hello($ag); 1 })
                    or $ag->{ws} = undef;
            }
        }
        @agents = grep { $_->{ws} } @agents;
        next unless @msgs;
        my @texts = $self->decode_batch(@msgs);
        for my $i (0 .. $#texts) {
            my ($h) = $texts[$i] =~ /config_hash: "((?:[^"\\]|\\.)*)"/;
            if (!defined $h) {
                $self->on_message($who[$i], $texts[$i]) if $who[$i]{ws};
                next;
            }
            $h = unpack 'H*', OpAMPTest::_unescape($h);
            push @{ $who[$i]{got} }, [ $h, time ];
            $self->answer($who[$i], $h) if $who[$i]{ws};
        }
    }
    return $done ? $done->() : 1;
}

sub field {
    my ($self, $ag, $f) = @_;
    return $self->{t}->redis('HGET', $P . 'agent:{'
                             . OpAMPFleet::uid_text($ag->{uid}) . '}', $f)
           // '';
}

# a condition for pump(): every agent reports APPLIED for hash $h
sub all_run {
    my ($self, $h) = @_;
    return sub {
        !grep { $self->field($_, 'config_hash') ne $h
                || $self->field($_, 'config_status') ne 'APPLIED' }
            @{ $self->{agents} };
    };
}

# what Redis and the test know of the agents not running $h, for a
# failure's diagnostics
sub laggards {
    my ($self, $h) = @_;
    for my $ag (grep { $self->field($_, 'config_hash') ne $h
                       || $self->field($_, 'config_status') ne 'APPLIED' }
                @{ $self->{agents} })
    {
        my $f = $self->{t}->hgetall($P . 'agent:{'
                                    . OpAMPFleet::uid_text($ag->{uid}) . '}');
        diag(explain { uid => OpAMPFleet::uid_text($ag->{uid}),
                       rank => $ag->{rank}, reconnects => $ag->{reconnects},
                       got => [ map { substr($_->[0], 0, 8) . " $_->[1]" }
                                @{ $ag->{got} } ],
                       map { ($_ => $f->{$_}) }
                       grep { !/^(description|components|status)/ }
                       keys %$f });
    }
}

# how many times the agent received hash $h
sub received {
    my ($ag, $h) = @_;
    return scalar grep { $_->[0] eq $h } @{ $ag->{got} };
}

# the time each stage of a rollout's plan first and last reached an
# agent with $h: the agents in rank order cut at @$bound (the agents of
# each stage, counted from the first), as ([first...], [last...])
sub stage_times {
    my ($self, $h, $bound) = @_;
    my (@first, @last);
    my $i = 0;
    for my $ag (sort { $a->{rank} <=> $b->{rank} } @{ $self->{agents} }) {
        my $k = 0;
        $k++ while $k < $#$bound && $i >= $bound->[$k];
        $i++;
        my ($t) = map { $_->[1] } grep { $_->[0] eq $h } @{ $ag->{got} };
        next unless defined $t;
        $first[$k] = $t if !defined $first[$k] || $t < $first[$k];
        $last[$k] = $t if !defined $last[$k] || $t > $last[$k];
    }
    return (\@first, \@last);
}

1;
